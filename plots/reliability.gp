# (e) Reliability diagram (plots/reliability.gp): accuracy vs confidence of the next-token
# prediction in 15 equal-width bins, full cache vs compressed, ECE in the key.
# @STEM@.dat: block 0 = full cache, block 1 = compressed; rows "mean_conf accuracy count".
array series[2] = [@TITLES@]
set title '@TITLE@' noenhanced
set xlabel 'confidence (max next-token probability)'
set ylabel 'accuracy (fraction correct)'
set xrange [0:1]
set yrange [0:1]
set size square
set key outside right top
plot x with lines dt 2 lw 1.5 lc rgb '#777777' title 'perfect calibration', \
     for [i=1:2] '@STEM@.dat' index (i-1) using 1:2 with linespoints linetype i title series[i]
