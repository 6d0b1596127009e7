"""Training: the config and recipes (``config``), the loop (``loop``), its state (``state``), the process
group (``distributed``) and the torchrun launcher (``launch``)."""
