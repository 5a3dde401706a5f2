"""Learning histories: the source algorithms, the environment loop they run in, the histories
file and its window sampler, and the token batch every later stage passes around."""
