"""tumorseg: brain-tumour segmentation with a 3-D U-Net, as a course and a toolkit.

One module per stage: data -> synthetic -> patches -> model / metrics -> train -> inference -> cli.
Importing the package is cheap; TensorFlow loads only with the modules that need it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter quiet
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI, BF16 or AMX;
# elsewhere (AVX2) a cpu-preset training step is 2.8x slower without them (python -m benchmarks
# precision). Read when TensorFlow loads: import tumorseg first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
