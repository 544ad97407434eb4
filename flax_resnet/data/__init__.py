"""Input data, one job per module: what a dataset is and how it is prepared and checked
(`datasets`), the per-dataset normalization statistics (`statistics`), augmentation ops
(`augment`), which example goes to which host and step (`sharding`), the training and evaluation
iterators (`pipeline`), a folder of the user's images (`image_folder`), Fashion-MNIST prepared
offline (`fashion_mnist`), and TensorFlow kept off the accelerators (`tf_cpu_only`).

Importing this package imports nothing heavy; `statistics` imports nothing at all, and the
other modules import TensorFlow.
"""

import os

# TensorFlow only feeds data here and runs none of its oneDNN kernels (matmuls, convolutions),
# so its start-up notice about them is noise. Takes effect where TensorFlow is not imported
# yet; a setting of the user's own wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
