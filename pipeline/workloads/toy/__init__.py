"""2-D test functions (`functions`), many starts descended at once (`descent`), what `tune` scores a toy setting
by (`scores`) and the notebook's hand-written descent, corrected (`reference`). No I/O."""
from pipeline.workloads.toy.descent import Trajectory, run_descent, starting_points
from pipeline.workloads.toy.functions import FUNCTIONS, Function2D, get_function
from pipeline.workloads.toy.scores import basin_map, capped_gaps, score_curve
