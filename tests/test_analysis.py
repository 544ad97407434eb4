"""flax_resnet.analysis: layer responses (the paper's Figure 7), output scale and kernel norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from flax_resnet import create_model
from flax_resnet.analysis import kernel_norm, layer_responses, output_scale
from flax_resnet.scan_layout import to_scanned_layout


@pytest.mark.parametrize("name,count", [("cifar_resnet20", 19), ("cifar_plain20", 19),
                                        ("cifar_resnet32", 31), ("resnet18", 16),
                                        ("resnet50", 16)])
@pytest.mark.slow
def test_one_value_per_3x3_convolution_in_network_order(name, count):
  model = create_model(name, num_classes=10)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x)
  stds, names = layer_responses(model, variables, x, return_names=True)
  assert stds.shape == (count,) and np.all(stds > 0)
  first = "stem/bn" if name.startswith("cifar") else "stage1/block1/"
  assert names[0].startswith(first)
  assert names[-1].startswith(f"stage{len(model.stage_sizes)}/block{model.stage_sizes[-1]}/")
  assert not any("shortcut" in n for n in names)


def _bn(y, bn_params, bn_stats, epsilon=1e-5):
  return ((y - bn_stats["mean"]) / jnp.sqrt(bn_stats["var"] + epsilon) * bn_params["scale"]
          + bn_params["bias"])


@pytest.mark.slow
def test_values_are_the_std_after_batch_norm_before_relu_and_addition():
  model = create_model("cifar_resnet20", widths=(4, 8, 8))
  x = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  # Non-trivial running statistics, so that inference mode matters.
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda s: s + 0.3, variables["batch_stats"])}
  stds = layer_responses(model, variables, x)
  params, stats = variables["params"], variables["batch_stats"]
  stem = lax.conv_general_dilated(x, params["stem"]["conv"]["kernel"], (1, 1),
                                  ((1, 1), (1, 1)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
  stem = _bn(stem, params["stem"]["bn"], stats["stem"]["bn"])
  np.testing.assert_allclose(stds[0], float(jnp.std(stem)), rtol=1e-5)
  # The second layer's input is the stem's output after its ReLU.
  block = params["stage1"]["block1"]
  y = lax.conv_general_dilated(jax.nn.relu(stem), block["conv1"]["kernel"], (1, 1),
                               ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = _bn(y, block["bn1"], stats["stage1"]["block1"]["bn1"])
  np.testing.assert_allclose(stds[1], float(jnp.std(y)), rtol=1e-5)


@pytest.mark.slow
def test_scanned_blocks_give_the_same_responses():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  model = create_model("cifar_resnet20", widths=(4, 8, 8))
  variables = model.init(jax.random.key(1), x)
  scanned = create_model("cifar_resnet20", widths=(4, 8, 8), scan_blocks=True)
  np.testing.assert_allclose(layer_responses(scanned, to_scanned_layout(variables), x),
                             layer_responses(model, variables, x), rtol=1e-5)


@pytest.mark.slow
def test_output_scale_is_the_training_mode_logits_std_and_loss():
  model = create_model("cifar_resnet20", num_classes=10, widths=(4, 8, 8))
  x = jax.random.normal(jax.random.key(0), (8, 16, 16, 3))
  labels = jnp.arange(8) % 10
  variables = model.init(jax.random.key(1), x)
  # Running statistics far from the batch's: training mode must not use them.
  variables = {"params": variables["params"],
               "batch_stats": jax.tree.map(lambda s: s + 5.0, variables["batch_stats"])}
  scale = output_scale(model, variables, x, labels)
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  expected_loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])
  np.testing.assert_allclose(scale["logit_std"], float(jnp.std(logits)), rtol=1e-5)
  np.testing.assert_allclose(scale["loss"], float(expected_loss), rtol=1e-5)
  inference = model.apply(variables, x, train=False)
  assert abs(float(jnp.std(inference)) - scale["logit_std"]) > 1e-3


def test_output_scale_runs_a_model_built_for_synchronized_batch_norm():
  model = create_model("cifar_plain20", num_classes=10, widths=(4, 8, 8), axis_name="batch")
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  variables = model.init(jax.random.key(1), x)
  scale = output_scale(model, variables, x, jnp.zeros(4, jnp.int32))
  assert scale["logit_std"] > 0 and scale["loss"] > 0


def test_kernel_norm_counts_convolution_kernels_only_in_either_layout():
  model = create_model("cifar_resnet20", widths=(4, 8, 8))
  x = jnp.zeros((1, 16, 16, 3))
  params = model.init(jax.random.key(1), x)["params"]
  convs = [leaf for path, leaf in jax.tree.leaves_with_path(params)
           if path[-1].key == "kernel" and leaf.ndim == 4]
  assert len(convs) == 19  # 19 convolutions; the classifier's 2-D kernel is left out
  expected = float(np.sqrt(sum(np.sum(np.square(np.asarray(c))) for c in convs)))
  np.testing.assert_allclose(kernel_norm(params), expected, rtol=1e-6)
  doubled = jax.tree.map(lambda p: 2 * p, params)
  np.testing.assert_allclose(kernel_norm(doubled), 2 * expected, rtol=1e-6)
  scanned = to_scanned_layout({"params": params})["params"]
  np.testing.assert_allclose(kernel_norm(scanned), expected, rtol=1e-6)
