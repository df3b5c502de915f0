"""Long work: the store (projects, runs and jobs), the fair queue, executors and the worker.

Importing the package loads nothing heavy: import the module you need."""
