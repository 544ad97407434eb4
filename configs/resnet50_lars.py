"""ResNet-50 on ImageNet with batch 32,768 and LARS, as Google's MLPerf Training submissions on
TPU pods ran it: the peak learning rate 27.5 reached by a linear warm-up over 16 epochs, then
polynomial (power 2) decay over the rest of 60 epochs, momentum 0.9321, weight decay 1e-4,
label smoothing 0.1. MLPerf runs stop at the first evaluation (every 4 epochs) at 75.9% top-1
or better. Weight decay and LARS's trust ratio skip biases and BatchNorm parameters.

Not verified here (no ImageNet run of ours). The same submissions used peak 31.2 with 25
warm-up epochs, and 25.67 with 29 at batch 55,296: for another batch size, start near these
and tune. Where the batch does not fit in memory, add e.g. --config.grad_accum_steps=2
(BatchNorm then sees half a batch at a time).

    python train.py --config=configs/resnet50_lars.py --workdir=gs://BUCKET/lars \
        --config.data_dir=gs://BUCKET/tfds
"""

from configs import resnet50


def get_config():
  config = resnet50.get_config()
  config.optimizer = "lars"
  config.batch_size = 32_768
  config.learning_rate = 27.5           # the peak, used as given
  config.lr_reference_batch_size = 0    # no linear scaling with batch_size
  config.lr_schedule = "polynomial"
  config.lr_power = 2.0
  config.lr_end = 1e-4
  config.warmup_epochs = 16.0
  config.num_epochs = 60
  config.momentum = 0.9321
  config.weight_decay = 1e-4
  config.label_smoothing = 0.1
  return config
