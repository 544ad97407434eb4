"""Input data, one job per module: what a dataset is and how it is prepared and checked
(`datasets`), the per-dataset normalization statistics (`statistics`), augmentation ops
(`augment`), which example goes to which host and step (`order`), the training and evaluation
iterators (`pipeline`), a folder of the user's images (`image_folder`), Fashion-MNIST prepared
offline (`fashion_mnist`), and TensorFlow kept off the accelerators (`tf_host`).

Importing this package imports nothing heavy; `statistics` imports nothing at all, and the
other modules import TensorFlow.
"""
