"""Scale-out of the DiT over several GPUs (or CPU processes) on ``torch.distributed``.

- :mod:`.sequence`: Ulysses sequence parallelism inside ``MagiHumanDiT.forward`` (``enable_sequence_parallel``).
- :mod:`.launch`: torchrun / ``--gpus N`` for the command line, and a local gloo group for tests and benchmarks.
- :mod:`.workers`: a group of worker processes driven from one host process (the ComfyUI Multi-GPU nodes).
- :mod:`.cost`: the communication model (bytes per all-to-all) and the expected speed-up.

Only :mod:`.sequence` is imported here (the DiT imports it); import the others by name.
"""

from .sequence import (ExchangeStats, SequenceParallel, SequenceShard, check_world_size, disable_sequence_parallel,
                       enable_sequence_parallel, sequence_parallel, valid_world_sizes)

__all__ = ["ExchangeStats", "SequenceParallel", "SequenceShard", "check_world_size", "disable_sequence_parallel",
           "enable_sequence_parallel", "sequence_parallel", "valid_world_sizes"]
