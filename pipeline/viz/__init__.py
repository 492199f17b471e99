"""Every matplotlib figure, and the only package that imports matplotlib: one look per optimizer (`styles`), the
toy and training figures (`figures`), the tune's (`tune`) and the landscape's (`landscape`). Each function returns
a Figure and never saves or shows it."""
from pipeline.viz.canvas import legend_outside  # first: it sets the headless backend
from pipeline.viz.styles import look, looks
