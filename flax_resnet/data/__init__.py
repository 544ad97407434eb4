"""Input data, one job per module: the static facts of each dataset (`catalog`), the configured
dataset checked, described and prepared (`datasets`), the per-dataset normalization statistics
(`statistics`), augmentation ops (`augment`), which example goes to which host and step
(`sharding`), the training and evaluation iterators (`pipeline`), a folder of the user's
images (`image_folder`), Fashion-MNIST prepared offline (`fashion_mnist`), and TensorFlow kept
off the accelerators (`tf_cpu_only`).

Importing this package imports nothing heavy; `catalog` and `statistics` import no TensorFlow
(the config check reads `catalog`), the other modules do.
"""

import os

# TensorFlow only feeds data here and runs none of its oneDNN kernels (matmuls, convolutions),
# so its start-up notice about them is noise. Takes effect where TensorFlow is not imported
# yet; a setting of the user's own wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
