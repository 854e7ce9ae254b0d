"""tumorseg: brain-tumour segmentation with a 3-D U-Net, as a course and a toolkit.

One module per stage: data -> synthetic -> patches -> model / metrics -> train -> inference -> cli.
Importing the package is cheap; TensorFlow loads only with the modules that need it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter quiet

__version__ = "0.1.0"
