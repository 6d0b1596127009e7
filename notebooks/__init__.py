"""The workbench notebooks (01 data prep, 02 training, 03 entropy, 04 compression), shipped with the package."""
