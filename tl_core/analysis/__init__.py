"""Reading results: metrics with intervals, evaluation, calibration, head start, recommendation,
alarms, advice, Grad-CAM.

Importing the package loads nothing heavy: import the module you need."""
