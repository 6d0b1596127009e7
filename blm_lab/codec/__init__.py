"""Lossless coding: the exact range coder (``coder``), the container format (``container``) and
model-driven compression (``neural``)."""
