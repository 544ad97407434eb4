"""Input data: what a dataset is and how it is prepared (`datasets`), augmentation ops
(`augment`), the training and evaluation iterators (`pipeline`), a folder of the user's
images (`image_folder`) and Fashion-MNIST prepared offline (`fashion_mnist`).

Importing this package imports nothing heavy; its modules import TensorFlow.
"""
