# (a) Quality vs compression (plots/pareto.gp): one line per strategy family (mean over
# sequences with 95% t-interval bars), Pareto-optimal configurations ringed in black.
# @STEM@.dat: block i-1 = family i, rows "ratio mean t_lo t_hi config_id" sorted by ratio;
# the last block (index @N@) = the Pareto-optimal points.
array family[@N@] = [@FAMILIES@]
set title '@TITLE@' noenhanced
set xlabel 'compression ratio (fp16 full-cache bytes / compressed bytes)'
set ylabel '@YLABEL@'
set logscale x 2
set format x '%g×'
set xrange [@XRANGE@]
set key outside right top
plot for [i=1:@N@] '@STEM@.dat' index (i-1) using 1:2:3:4 with yerrorlines linetype i title family[i], \
     '@STEM@.dat' index @N@ using 1:2 with points pt 6 ps 3.2 lw 2 lc rgb '#000000' title 'Pareto-optimal'
