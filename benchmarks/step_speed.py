"""Speed of the library's compiled train step (forward, backward, SGD update) or forward pass.

    python benchmarks/step_speed.py --model=cifar_resnet20 --batch_size=128 --image_size=32 \
        [--dtype=float32|bfloat16] [--devices=K] [--widths=24,48,96] [--scan_blocks] \
        [--optimizer=sgd|lars] [--grad_accum_steps=K] \
        [--conv_library=auto|ynnpack|eigen] [--keep_malloc_defaults] [--per_device_batch_norm] \
        [--inference] [--no_cpu_overrides] [--compare_torch] [--json=FILE]

Times `flax_resnet.step.train_step` mapped over K devices by
`flax_resnet.parallel.DataParallel`, exactly the step that train.py runs, on one fixed random
batch already on the devices (no input pipeline). Prints one line per figure: compile time of
the first step, images/second (median over several timed rounds, after warm-up), peak host
memory (and device memory where the device reports it), the step's FLOPs as XLA's cost
analysis counts them against 3x the forward pass's (2 x MACs from
`flax_resnet.count_macs`), and utilization of the device's peak where it is known.

`--inference` times the forward pass instead, `model.apply(variables, x, train=False)` mapped
over the devices as the step is, each on its shard of the batch (the figures count 1x forward).
`--no_cpu_overrides` builds the model without `flax_resnet.cpu.model_overrides` (the CPU
formulations train.py uses: materialized ReLUs, small-map and, with scanned blocks, canonical
convolutions), as the baseline they are measured against.
`--compare_torch` times PyTorch's CPU training step (with --inference: eval mode under
torch.no_grad()) of the same network (benchmarks/torch_resnet.py, the torchvision layout, no
torchvision needed) in a child process, round by round interleaved with ours, with the same
batch and as many threads as cores, and prints the ratio.

Imports no tensorflow or clu, so it runs where the library alone is installed.
On CPU it splits the batch over one virtual device per core, keeps freed host memory for reuse
and picks the convolution library for the CPU (flax_resnet.cpu), as train.py does;
`--keep_malloc_defaults` and `--conv_library` give the baselines for the last two.
`--per_device_batch_norm` takes BatchNorm's statistics over each device's shard alone: not
what train.py runs (it synchronizes them), but the measure of what synchronizing costs.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax_resnet import cpu  # noqa: E402  (no jax backend started yet)

# Peak dense FLOP/s per chip by (device kind prefix, dtype); float32 convolutions run as TF32
# on tensor cores under JAX's default precision on these GPUs.
PEAK_FLOPS = {("NVIDIA H100", "bfloat16"): 989e12, ("NVIDIA H100", "float32"): 495e12,
              ("NVIDIA H200", "bfloat16"): 989e12, ("NVIDIA H200", "float32"): 495e12,
              ("NVIDIA A100", "bfloat16"): 312e12, ("NVIDIA A100", "float32"): 156e12}
FP32_NON_TENSOR_PEAK = {"NVIDIA H100": 67e12, "NVIDIA H200": 67e12, "NVIDIA A100": 19.5e12}


def parse_widths(text: str) -> tuple[int, ...]:
  """'32,64,128' -> (32, 64, 128); '' -> () (the model's own widths)."""
  return tuple(int(w) for w in text.split(",") if w.strip())


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="cifar_resnet20")
  p.add_argument("--batch_size", type=int, default=128, help="global, over all devices")
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--devices", type=int, default=0,
                 help="devices to map over (0: all; on CPU one virtual device per core)")
  p.add_argument("--parallelism", default="shard_map", choices=("shard_map", "pmap"))
  p.add_argument("--widths", type=parse_widths, default=(),
                 help="per-stage widths, e.g. 32,64,128 (default: the model's own)")
  p.add_argument("--optimizer", default="sgd", choices=("sgd", "lars"),
                 help="the update the step applies (config.optimizer)")
  p.add_argument("--grad_accum_steps", type=int, default=1,
                 help="micro-batches per step (config.grad_accum_steps)")
  p.add_argument("--scan_blocks", action="store_true",
                 help="compile each stage's repeated blocks once (nn.scan)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  p.add_argument("--rounds", type=int, default=5, help="timed rounds (median is reported)")
  p.add_argument("--steps", type=int, default=3, help="steps per timed round")
  p.add_argument("--conv_library", default="auto", choices=("auto", *cpu.CONVOLUTION_LIBRARIES),
                 help="on CPU, the library of the convolutions (auto: as train.py, "
                      "FLAX_RESNET_CONVOLUTIONS or the CPU's default)")
  p.add_argument("--keep_malloc_defaults", action="store_true",
                 help="on CPU, do not keep freed host memory for reuse (the baseline)")
  p.add_argument("--per_device_batch_norm", action="store_true",
                 help="BatchNorm statistics per device, not synchronized (train.py synchronizes "
                      "them): shows what the synchronization costs")
  p.add_argument("--inference", action="store_true",
                 help="time the forward pass (train=False), not the train step")
  p.add_argument("--no_cpu_overrides", action="store_true",
                 help="on CPU, the model without cpu.model_overrides (the baseline)")
  p.add_argument("--compare_torch", action="store_true")
  p.add_argument("--torch_threads", type=int, default=0, help="0: one per core")
  p.add_argument("--json", default="", help="also write the figures to this file")
  return p.parse_args(argv)


def peak_host_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- ours ---------------------------------------------------------------------------------------

class FlaxStep:
  """The library's mapped train step (or forward pass), compiled once, on a fixed batch."""

  def __init__(self, args, devices):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax_resnet import create_model, optim
    from flax_resnet.config import default_config
    from flax_resnet.parallel import DataParallel
    from flax_resnet.parallel import AXIS
    from flax_resnet.step import StepSettings, create_train_state, train_step

    self.jax = jax
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    overrides = {"scan_blocks": True} if args.scan_blocks else {}
    if args.widths:
      overrides["widths"] = args.widths
    axis_name = None if args.per_device_batch_norm else AXIS  # None: BN statistics per device
    # The CPU's module overrides, as the training loop passes them (none on GPU and TPU).
    if not args.no_cpu_overrides:
      overrides.update(cpu.model_overrides(
          in_loops=args.scan_blocks or args.grad_accum_steps > 1))
    model = create_model(args.model, axis_name=axis_name, dtype=dtype, **overrides)
    self.num_classes = model.num_classes
    config = default_config()  # the paper's SGD, as train.py's configs use it
    config.batch_size = args.batch_size
    config.optimizer = args.optimizer
    lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=1000, num_train_steps=90_000)
    tx = optim.create_optimizer(config, lr_fn)
    image_shape = (args.image_size, args.image_size, 3)
    self.parallel = DataParallel(args.parallelism, devices)
    self.parallel.check_batch_size(args.batch_size)
    state = create_train_state(model, tx, image_shape, jax.random.key(0))
    if args.inference:
      def forward(state, batch):  # the logits' sum: one value, the same on every device
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             batch["image"], train=False)
        return jax.lax.psum(jnp.sum(logits.astype(jnp.float32)), AXIS)
      step = self.parallel.map_eval(forward)
    else:
      settings = StepSettings(model=model, num_classes=model.num_classes, tx=tx,
                              learning_rate_fn=lr_fn, grad_accum_steps=args.grad_accum_steps)
      step = self.parallel.map_step(functools.partial(train_step, settings=settings))
    self.inference = args.inference
    rng = np.random.default_rng(0)
    self.host_batch = {
        "image": rng.standard_normal((args.batch_size, *image_shape), dtype=np.float32),
        "label": rng.integers(0, model.num_classes, args.batch_size).astype(np.int32)}
    self.state = self.parallel.put_state(state)
    self.batch = self.parallel.put_batch(self.host_batch)

    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - start
    self.run(1)
    self.first_step_seconds = time.perf_counter() - start
    self.metrics = None

  def run(self, steps: int) -> float:
    """Seconds per step over `steps` back-to-back steps."""
    start = time.perf_counter()
    for _ in range(steps):
      out = self.compiled(self.state, self.batch)
      self.metrics = out if self.inference else out[1]
      self.state = self.state if self.inference else out[0]
    self.jax.block_until_ready((self.state, self.metrics))
    return (time.perf_counter() - start) / steps

  def flops_per_step(self) -> float:
    """XLA's count for the whole step: the compiled program is one device's share (SPMD), so
    it is multiplied by the device count (pmap compiles the per-device program too)."""
    cost = self.compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    return float(cost.get("flops", 0.0)) * self.parallel.num_devices

  def device_peak_bytes(self):
    try:
      stats = self.parallel.devices[0].memory_stats()
    except Exception:  # not every backend reports memory  # noqa: BLE001
      return None
    return stats.get("peak_bytes_in_use") if stats else None


# --- PyTorch reference (benchmarks/torch_resnet.py) -------------------------------------

class TorchStep:
  """PyTorch's CPU training step of the same network: SGD, momentum 0.9, weight decay 1e-4;
  with `args.inference` its forward pass in eval mode under torch.no_grad()."""

  def __init__(self, args, host_batch, threads: int):
    from benchmarks.torch_resnet import torch_resnet
    net, torch = torch_resnet(args.model, args.widths)
    torch.set_num_threads(threads)
    self.torch, self.net, self.inference = torch, net, args.inference
    if args.inference:
      net.eval()
    self.opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    self.x = torch.from_numpy(host_batch["image"].transpose(0, 3, 1, 2).copy())
    self.y = torch.from_numpy(host_batch["label"].astype("int64"))
    self.run(1)

  def run(self, steps: int) -> float:
    F = self.torch.nn.functional
    start = time.perf_counter()
    for _ in range(steps):
      if self.inference:
        with self.torch.no_grad():
          self.net(self.x)
          continue
      self.opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(self.net(self.x), self.y)
      loss.backward()
      self.opt.step()
    return (time.perf_counter() - start) / steps


class TorchProcess:
  """`TorchStep` in a child process, timed round by round on request.

  Why a child: PyTorch's allocations would share this process's malloc heap, which
  `flax_resnet.cpu` keeps for XLA's buffers (one arena, nothing handed back to the kernel).
  Mixed in, they fragmented it: XLA's resnet50 batch-8 rounds swung between 2.6 and 4.4
  images/s. The child gets the same malloc settings as this process (so PyTorch gains from
  them as much as we do), but a heap of its own.
  """

  def __init__(self, args, host_batch, threads: int):
    context = multiprocessing.get_context("spawn")  # no copy of this process's JAX runtime
    self._conn, child_conn = context.Pipe()
    self._process = context.Process(target=_serve_torch_rounds, daemon=True,
                                    args=(child_conn, args, host_batch, threads))
    self._process.start()
    self.version, self.threads = self._conn.recv()

  def run(self, steps: int) -> float:
    self._conn.send(steps)
    return self._conn.recv()

  def close(self) -> None:
    self._conn.send(None)
    self._process.join()


def _serve_torch_rounds(conn, args, host_batch, threads: int) -> None:
  if not args.keep_malloc_defaults:
    cpu.reuse_freed_host_memory()
  step = TorchStep(args, host_batch, threads)
  conn.send((step.torch.__version__, step.torch.get_num_threads()))
  while (steps := conn.recv()) is not None:
    conn.send(step.run(steps))


# --- report -----------------------------------------------------------------------------------

def main(argv=None):
  args = parse_args(argv)
  library = cpu.resolve_convolution_library(
      None if args.conv_library == "auto" else args.conv_library)
  cpu.configure_cpu(args.devices or None,  # only the host platform reads these settings
                    reuse_host_memory=not args.keep_malloc_defaults,
                    convolution_library=library)
  import jax
  from flax_resnet import count_macs, create_model

  available = jax.devices()
  if args.devices > len(available):
    raise SystemExit(f"--devices={args.devices} but this machine has {len(available)} "
                     f"{available[0].platform} devices")
  devices = available[:args.devices or len(available)]
  kind = devices[0].device_kind
  platform = devices[0].platform
  print(f"device: {len(devices)} x {kind} ({platform}), jax {jax.__version__}, "
        f"host cores: {cpu.default_cpu_device_count()}")
  print(f"model: {args.model}{' widths ' + ','.join(map(str, args.widths)) if args.widths else ''}, "
        f"batch {args.batch_size}, image {args.image_size}, {args.dtype}, "
        f"{'scanned' if args.scan_blocks else 'unrolled'} blocks, {args.parallelism}"
        f"{', glibc malloc defaults' if args.keep_malloc_defaults else ''}"
        f"{', BatchNorm statistics per device' if args.per_device_batch_norm else ''}"
        f"{', convolutions on ' + library if platform == 'cpu' else ''}"
        f"{', no CPU overrides' if args.no_cpu_overrides else ''}"
        f"; {'inference (forward, train=False)' if args.inference else 'train step'}")

  ours = FlaxStep(args, devices)
  print(f"compile_seconds: {ours.compile_seconds:.2f}  (first step incl. compile: "
        f"{ours.first_step_seconds:.2f} s)")
  for _ in range(args.warmup):
    ours.run(1)
  host_mb = peak_host_mb()

  theirs = None
  if args.compare_torch:
    threads = args.torch_threads or cpu.default_cpu_device_count()
    theirs = TorchProcess(args, ours.host_batch, threads)
    for _ in range(args.warmup):
      theirs.run(1)

  ours_times, theirs_times = [], []
  for _ in range(args.rounds):  # interleaved, so a shared machine's load hits both alike
    ours_times.append(ours.run(args.steps))
    if theirs:
      theirs_times.append(theirs.run(args.steps))
  if theirs:
    theirs.close()
  step_seconds = statistics.median(ours_times)
  images_per_second = args.batch_size / step_seconds
  # The fastest round is the least disturbed by other processes on a shared machine.
  best_images_per_second = args.batch_size / min(ours_times)

  widths = {"widths": args.widths} if args.widths else {}
  macs = count_macs(create_model(args.model, **widths), (1, args.image_size, args.image_size, 3))
  forward_flops = 2.0 * macs * args.batch_size
  flops = ours.flops_per_step()
  # The model's FLOPs per step: forward and backward (at twice the forward's cost), or forward.
  passes = 1 if args.inference else 3
  useful = passes * forward_flops
  figures = {
      "model": args.model, **widths, "batch_size": args.batch_size, "image_size": args.image_size,
      "dtype": args.dtype, "devices": len(devices), "device_kind": kind, "platform": platform,
      "scan_blocks": args.scan_blocks, "parallelism": args.parallelism,
      "optimizer": args.optimizer, "grad_accum_steps": args.grad_accum_steps,
      "mode": "inference" if args.inference else "train", "cpu_overrides": not args.no_cpu_overrides,
      "malloc_defaults": args.keep_malloc_defaults,
      "batch_norm": "per device" if args.per_device_batch_norm else "synchronized",
      "conv_library": library if platform == "cpu" else None,
      "compile_seconds": ours.compile_seconds, "first_step_seconds": ours.first_step_seconds,
      "step_seconds": step_seconds, "step_seconds_all": ours_times,
      "images_per_second": images_per_second, "best_images_per_second": best_images_per_second,
      "peak_host_memory_mb": host_mb,
      "flops_per_step": flops, "forward_flops": forward_flops,
      "flops_vs_3x_forward": flops / (3 * forward_flops), "model_flops_per_step": useful,
      "flops_vs_model_flops": flops / useful,
      "train_loss": None if args.inference else
                    float(ours.parallel.get_metrics(ours.metrics)["train_loss"]),
  }
  print(f"images_per_second: {images_per_second:.1f}  (step {step_seconds * 1e3:.1f} ms, "
        f"median of {args.rounds} rounds x {args.steps} steps; best round "
        f"{best_images_per_second:.1f})")
  print(f"peak_host_memory_mb: {host_mb:.0f}")
  device_peak = ours.device_peak_bytes()
  if device_peak:
    figures["peak_device_memory_mb"] = device_peak / 2**20
    print(f"peak_device_memory_mb: {device_peak / 2**20:.0f}")
  print(f"flops_per_step (XLA cost analysis): {flops / 1e9:.2f} GFLOP; {passes} x forward "
        f"(2 x {macs / 1e6:.1f} M MACs x {args.batch_size}): {useful / 1e9:.2f} GFLOP; "
        f"ratio {figures['flops_vs_model_flops']:.3f}")
  # MFU counts the model's FLOPs (`useful`), not XLA's count: on GPU that count leaves out the
  # cuDNN convolutions (custom calls; seen at 0.017 x on an H100), and with scanned blocks it
  # counts each stage's loop body once.
  if args.scan_blocks or figures["flops_vs_model_flops"] < 0.5:
    print("  (XLA's count misses work here: scanned loop bodies count once, GPU convolutions "
          f"are custom calls; utilization below uses {passes} x forward)")
  figures["achieved_flops_per_second"] = useful / step_seconds
  print(f"achieved: {useful / step_seconds / 1e12:.3f} TFLOP/s")
  peak = next((v for (k, d), v in PEAK_FLOPS.items()
               if kind.startswith(k) and d == args.dtype), None)
  if peak:
    figures["peak_flops_per_second"] = peak * len(devices)
    figures["utilization"] = useful / step_seconds / (peak * len(devices))
    line = (f"utilization (MFU): {figures['utilization']:.1%} of {peak / 1e12:.0f} TFLOP/s "
            f"{'TF32 ' if args.dtype == 'float32' else ''}dense peak")
    fp32 = next((v for k, v in FP32_NON_TENSOR_PEAK.items() if kind.startswith(k)), None)
    if args.dtype == "float32" and fp32:
      figures["utilization_vs_fp32_peak"] = useful / step_seconds / (fp32 * len(devices))
      line += f" ({figures['utilization_vs_fp32_peak']:.0%} of the {fp32 / 1e12:.0f} " \
              "TFLOP/s non-tensor FP32 peak)"
    print(line)
  else:
    print(f"utilization: peak FLOP/s of {kind!r} unknown")

  if theirs:
    torch_seconds = statistics.median(theirs_times)
    figures.update(torch_images_per_second=args.batch_size / torch_seconds,
                   torch_step_seconds=torch_seconds, torch_step_seconds_all=theirs_times,
                   torch_version=theirs.version, torch_threads=theirs.threads,
                   torch_best_images_per_second=args.batch_size / min(theirs_times),
                   ratio_vs_torch=torch_seconds / step_seconds,
                   ratio_vs_torch_best=min(theirs_times) / min(ours_times))
    print(f"torch_images_per_second: {figures['torch_images_per_second']:.1f}  "
          f"(torch {theirs.version}, {theirs.threads} threads, in a child process, "
          f"interleaved)")
    print(f"ratio_vs_torch (ours / PyTorch images/s): {figures['ratio_vs_torch']:.2f} "
          f"(medians; best rounds: {figures['ratio_vs_torch_best']:.2f})")

  if args.json:
    with open(args.json, "w") as f:
      json.dump(figures, f, indent=1)
  return figures


if __name__ == "__main__":
  main()
