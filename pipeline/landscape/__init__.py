"""Loss landscapes of the real network (Li et al. 2018): the recorded paths and the plane through them (`plane`),
the loss over a grid on it (`loss_grid`), and what a run or a sweep logs of it (`report`)."""
from pipeline.landscape.plane import NotDrawable, Plane, Recorder, pca_plane, random_plane
