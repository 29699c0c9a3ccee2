"""The one training loop, its optimiser, checkpoints, data parallelism, result and provenance.

Named ``training`` rather than ``train`` so that ``jepa_lab.train`` stays the public function."""
