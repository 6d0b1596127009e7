"""Figures, the surprisal HTML view and the ipywidgets entropy explorer: blm_lab.viz.figures, .html, .explorer."""
