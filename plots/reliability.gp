# (e) Reliability diagram (plots/reliability.gp): accuracy vs confidence of the next-token
# prediction in @BINS@ equal-width bins, full cache (series 1) vs the chosen configurations,
# ECE in the key (the full cache drawn again on top: a configuration that matches it
# would hide it); below, the predictions per bin (log scale).
# @STEM@.dat: block i-1 = series i; rows "bin mean_conf accuracy count".
array series[@N@] = [@TITLES@]
set multiplot
set lmargin at screen @ML@ / KV_W
set rmargin at screen (@ML@ + @PLOT_W@) / KV_W
set tmargin at screen (KV_H - @MT@) / KV_H
set bmargin at screen (KV_H - @MT@ - @PLOT_H@) / KV_H
unset xlabel
set format x ''
set ylabel 'accuracy' offset 0.5,0
set xrange [0:1]
set yrange [0:1]
set xtics 0.2
set ytics 0.2
if (@KEY_RIGHT@) {
    set key at screen (@ML@ + @PLOT_W@ + 0.2) / KV_W, (KV_H - @MT@) / KV_H left top Left reverse vertical width -1
} else {
    set key at screen 0.08 / KV_W, (KV_H - @MT@ - @PLOT_H@ - 0.12 - @HIST_H@ - @AXIS_H@) / KV_H left top Left reverse vertical maxrows @KEYROWS@ width -1
}
plot x with lines dt 2 lw 0.8 lc rgb '#777777' title 'perfect calibration', \
     for [i=1:@N@] '@STEM@.dat' index (i-1) using 2:3 with linespoints linetype i title series[i], \
     '@STEM@.dat' index 0 using 2:3 with linespoints linetype 1 notitle
unset key
set tmargin at screen (KV_H - @MT@ - @PLOT_H@ - 0.12) / KV_H
set bmargin at screen (KV_H - @MT@ - @PLOT_H@ - 0.12 - @HIST_H@) / KV_H
set format x '%g'
set xlabel 'confidence (max probability)' offset 0,0.4
set ylabel 'count' offset 0.2,0
set logscale y 10
set yrange [1:@CMAX@]
set ytics 100
set format y '10^{%L}'
plot for [i=1:@N@] '@STEM@.dat' index (i-1) using (($1 + 0.5) / @BINS@):4 with histeps linetype i notitle
unset logscale y
