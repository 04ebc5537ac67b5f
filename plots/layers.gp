# (c) Per-layer profile (plots/layers.gp): per-layer budgets (mean kv entries held, the
# PyramidKV view) or a per-layer metric, one line per configuration (at most 8; identical
# lines drawn once), key below the plot.
# @STEM@.dat: block i-1 = configuration i, rows "layer value" (mean over heads).
array series[@N@] = [@TITLES@]
set title '@TITLE@' noenhanced offset 0,-0.7
set xlabel 'layer' offset 0,0.4
set ylabel '@YLABEL@' offset 0.2,0
set xtics @XTIC@
set xrange [@XRANGE@]
set yrange [@YRANGE@]
@YAXIS@
set lmargin at screen @ML@ / KV_W
set rmargin at screen (KV_W - @MR@) / KV_W
set tmargin at screen (KV_H - @MT@) / KV_H
set bmargin at screen (KV_H - @MT@ - @PLOT_H@) / KV_H
set key at screen 0.08 / KV_W, (KV_H - @MT@ - @PLOT_H@ - @AXIS_H@) / KV_H left top Left reverse vertical maxrows @KEYROWS@ width -1
plot for [i=1:@N@] '@STEM@.dat' index (i-1) using 1:2 with linespoints linetype i title series[i]
