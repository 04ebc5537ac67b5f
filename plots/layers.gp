# (c) Per-layer profile (plots/layers.gp): per-layer budgets (mean kv entries held, the
# PyramidKV view) or a per-layer metric, one line per configuration.
# @STEM@.dat: block i-1 = configuration i, rows "layer value" (mean over heads).
array series[@N@] = [@TITLES@]
set title '@TITLE@' noenhanced
set xlabel 'layer'
set ylabel '@YLABEL@'
set xtics @XTIC@
set xrange [@XRANGE@]
set key below left Left reverse maxrows 4
plot for [i=1:@N@] '@STEM@.dat' index (i-1) using 1:2 with linespoints linetype i title series[i]
