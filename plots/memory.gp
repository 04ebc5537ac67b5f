# (d) KV-cache memory vs context length (plots/memory.gp): the full cache and the
# fixed-budget configurations, which saturate at their budget (measured bytes per held token).
# @STEM@.dat: block i-1 = configuration i, rows "context_tokens MiB".
array series[@N@] = [@TITLES@]
set title '@TITLE@' noenhanced offset 0,-0.7
set xlabel 'context length (tokens)' offset 0,0.4
set ylabel 'KV-cache memory (MiB)' offset 0.2,0
set xrange [0:@XMAX@]
set yrange [0:*]
set lmargin at screen @ML@ / KV_W
set rmargin at screen (KV_W - @MR@) / KV_W
set tmargin at screen (KV_H - @MT@) / KV_H
set bmargin at screen (KV_H - @MT@ - @PLOT_H@) / KV_H
set key at screen 0.08 / KV_W, (KV_H - @MT@ - @PLOT_H@ - @AXIS_H@) / KV_H left top Left reverse vertical maxrows @KEYROWS@ width -1
plot for [i=1:@N@] '@STEM@.dat' index (i-1) using 1:2 with lines linetype i title series[i]
