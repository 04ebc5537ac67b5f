# (f) Attention entropy per layer (plots/entropy.gp): one point per query head (its mean
# entropy over the trace's sequences and positions), the layer's median head as a bar, and
# the uniform-attention bound.
# @STEM@.dat: block 0 rows "layer median mean_log_visible"; block 1 rows "x head_entropy head".
set title '@TITLE@' noenhanced offset 0,-0.7
set xlabel 'layer' offset 0,0.4
set ylabel 'entropy (nats)' offset 0.2,0
set xrange [-0.6:@XMAX@]
set xtics @XTIC@
set yrange [0:*]
set ytics @YTIC@
set lmargin at screen @ML@ / KV_W
set rmargin at screen (KV_W - @MR@) / KV_W
set tmargin at screen (KV_H - @MT@) / KV_H
set bmargin at screen (KV_H - @MT@ - @PLOT_H@) / KV_H
set key at screen 0.08 / KV_W, (KV_H - @MT@ - @PLOT_H@ - @AXIS_H@) / KV_H left top Left reverse vertical maxrows @KEYROWS@ width -1
plot '@STEM@.dat' index 1 using 1:2 with points linetype 1 title 'head', \
     '@STEM@.dat' index 0 using 1:2:(0.3):(0) with vectors nohead lw 2 lc rgb '#000000' title 'median', \
     '@STEM@.dat' index 0 using ($1 - 0.15):2:(0.3):(0) with vectors nohead lw 2 lc rgb '#000000' notitle, \
     '@STEM@.dat' index 0 using 1:3 with linespoints dt 2 linetype 2 title 'uniform bound'
