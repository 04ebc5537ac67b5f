# kvreport compare (plots/compare.gp): one metric, one panel per run (multiplot), the
# configurations matched across runs on one shared x axis and one shared y range; mean over
# the run's sequences with its 95% t-interval. @STEM@.dat: one block per run (gnuplot index
# k-1 = run k), rows "x mean t_lo t_hi"; a configuration a run lacks has no row there.
# Drawn once per output by style.gp's loop (PNG, then PDF).
@PANELS@
