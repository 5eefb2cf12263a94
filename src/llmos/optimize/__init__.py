"""Optimization: cheaper models at a known cost in accuracy, and hyperparameters found by
the machine.

- compression (``recipe``, ``program``, ``service``): dynamic int8 quantization, pruning
  (unstructured, feed-forward channels, attention heads), knowledge distillation, ONNX edge
  bundles and GGUF export, each a kernel job (``optimize.compress``) that registers a new
  model version naming its parent, the method and its settings;
- comparison (``measure``, ``compare``): one measuring job per version on the same split;
- tuning (``tune``): Optuna studies whose trials are kernel jobs.

The library functions (``quantize``, ``prune``, ``distill``, ``onnx_export``,
``gguf_export``) take a model folder and write a new one; they know nothing of jobs.
"""
