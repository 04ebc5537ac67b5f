# (i) Quality vs decode position (plots/position.gp): per configuration (the best per
# family at matched compression, at most 8 lines) the metric at each decode offset from the
# prompt's end, mean over layers, heads and sequences (per_pos.csv); key below the plot.
# @STEM@.dat: block i-1 = configuration i, rows "offset value n_seq" (offsets averaged in
# bins of equal width when there are many: the bin's mean offset).
array series[@N@] = [@TITLES@]
set title '@TITLE@' noenhanced offset 0,-0.7
set xlabel 'decode offset (tokens)' offset 0,0.4
set ylabel '@YLABEL@' offset 0.2,0
set xrange [@XRANGE@]
set yrange [@YRANGE@]
@YAXIS@
set lmargin at screen @ML@ / KV_W
set rmargin at screen (KV_W - @MR@) / KV_W
set tmargin at screen (KV_H - @MT@) / KV_H
set bmargin at screen (KV_H - @MT@ - @PLOT_H@) / KV_H
set key at screen 0.08 / KV_W, (KV_H - @MT@ - @PLOT_H@ - @AXIS_H@) / KV_H left top Left reverse vertical maxrows @KEYROWS@ width -1
plot for [i=1:@N@] '@STEM@.dat' index (i-1) using 1:2 with linespoints linetype i title series[i]
