"""The implementation of L2BN behind :func:`l2bn.functional.l2_batch_norm`.

One module per role:

* ``dispatch``: checks nothing, decides once which backend runs a checked call;
* ``transforms``: whether a PyTorch transform (``torch.func``, forward-mode AD, tracing,
  ONNX export, ``torch.compile``) is recording the call;
* ``running``: the running-statistics rule (momentum factor and update), as BatchNorm's;
* ``sample_scale``: the per-sample scale ``rho_n`` of eq. (3);
* ``moments``: per-``(n, c)`` moments, the per-sample scale of eq. (3), channel statistics;
* ``passes`` / ``vector_passes``: the full-size passes of the PyTorch backend;
* ``composite``: the differentiable composite of torch operations (transforms, double
  backward);
* ``pytorch``: the PyTorch backend (hand-written backward, any device);
* ``cpu``: the fused C++ operators of ``l2bn._C`` (CPU, float32/float64);
* ``triton``: the Triton kernels (CUDA; Triton's interpreter in tests); its ``sync``
  module gives ``SyncL2BatchNorm``'s full-size passes on the same kernels;
* ``sync_stats`` / ``sync_function``: the distributed statistics of ``SyncL2BatchNorm``
  and its autograd function, on the passes ``dispatch.sync_backend`` picks.

Nothing here is public: :mod:`l2bn.backends` is the user-facing switchboard.
"""
