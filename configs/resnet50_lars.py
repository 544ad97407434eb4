"""ResNet-50 on ImageNet with batch 32768 (16k to 32k work alike), MLPerf-style: LARS, a
linear warm-up, then polynomial (power 2) decay to about 0 over about 40 epochs, label
smoothing 0.1. Weight decay and LARS's trust ratio skip biases and BatchNorm parameters.

The peak learning rate of LARS is not scaled from lr 0.1 at batch 256; the value below is a
starting point to tune for the batch size in use. Where the batch does not fit in memory, add
e.g. --config.grad_accum_steps=2 (BatchNorm then sees half a batch at a time).

    python train.py --config=configs/resnet50_lars.py --workdir=gs://BUCKET/lars \
        --config.data_dir=gs://BUCKET/tfds
"""

from configs import resnet50


def get_config():
  config = resnet50.get_config()
  config.optimizer = "lars"
  config.batch_size = 32_768
  config.learning_rate = 29.0           # the peak, used as given
  config.lr_reference_batch_size = 0    # no linear scaling with batch_size
  config.lr_schedule = "polynomial"
  config.lr_power = 2.0
  config.lr_end = 1e-4
  config.warmup_epochs = 5.0
  config.num_epochs = 40
  config.weight_decay = 5e-5
  config.label_smoothing = 0.1
  return config
