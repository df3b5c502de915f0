"""Training: the decoded-input cache, the frozen-prefix cache, checkpoints and fit.

Importing the package loads nothing heavy: import the module you need."""
