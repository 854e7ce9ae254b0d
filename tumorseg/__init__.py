"""tumorseg: brain-tumour segmentation with a 3-D U-Net, as a course and a toolkit.

One module per stage: data -> synthetic -> patches -> model / metrics -> train -> inference -> cli.
Importing the package is cheap; TensorFlow loads only with the modules that need it.
"""

__version__ = "0.1.0"
