"""The workbench: the run directory shared by the notebooks (``rundir``) and the papermill runner (``runner``)."""
