# (f) Attention-entropy distribution per layer (plots/entropy.gp): per-head mean entropy
# (over sequences and positions of the trace) distributed over the layer's query heads,
# with the uniform-attention bound.
# @STEM@.dat: rows "layer q05 q25 median q75 q95 mean_log_visible".
set title '@TITLE@' noenhanced
set xlabel 'layer'
set ylabel 'attention entropy (nats)'
set xrange [-0.6:@XMAX@]
set xtics @XTIC@
set yrange [0:*]
set boxwidth 0.5
set key outside right top
plot '@STEM@.dat' using 1:3:2:6:5 with candlesticks whiskerbars 0.5 linetype 1 title 'box 25–75%, whiskers 5–95%', \
     '@STEM@.dat' using 1:4:4:4:4 with candlesticks lc rgb '#000000' lw 2.5 title 'median', \
     '@STEM@.dat' using 1:7 with linespoints linetype 2 title 'uniform bound'
