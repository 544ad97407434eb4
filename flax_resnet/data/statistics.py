"""Per-channel mean and standard deviation of each dataset's training images, on the [0, 1]
scale. Kept free of TensorFlow so that inference (flax_resnet.inference) can import them.

image_folder uses ImageNet's statistics: a model fine-tuned from ImageNet weights sees inputs
scaled as it was trained.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
