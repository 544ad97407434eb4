"""ResNet-50 on ImageNet with batch 8192 in one hour's recipe (Goyal et al., 2017): plain SGD,
lr 0.1 x batch/256 = 3.2 reached by a linear warm-up over the first 5 epochs, /10 at epochs
30, 60 and 80 of 90, and the last BatchNorm scale of each residual block initialized to zero.

    python train.py --config=configs/resnet50_goyal.py --workdir=gs://BUCKET/goyal \
        --config.data_dir=gs://BUCKET/tfds
"""

from configs import resnet50


def get_config():
  config = resnet50.get_config()
  config.batch_size = 8192              # lr = 0.1 x 8192 / 256 (lr_reference_batch_size)
  config.warmup_epochs = 5.0            # linear from 0 (warmup_mode 'linear')
  config.lr_decay_epochs = (30, 60, 80)
  config.zero_init_residual = True
  return config
