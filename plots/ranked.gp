# (g) Strategies at matched compression (plots/ranked.gp): per family the configuration
# nearest the target ratio, best at the top, mean over sequences with bootstrap 95% interval
# (ranked), or with every sequence's value as a point (per_seq, STRIP = 1).
# @STEM@.dat: block 0 rows "row value lo hi ratio config_id"; block 1 rows "row value seq".
set label 1 '@TITLE@' at screen 0.05 / KV_W, (KV_H - 0.14) / KV_H left noenhanced
set xlabel '@XLABEL@' offset 0,0.4
set xrange [@XRANGE@]
@XAXIS@
set yrange [@YRANGE@]
set ytics (@YTICS@) noenhanced font ',7' scale 0
set grid xtics noytics
unset key
set lmargin at screen @ML@ / KV_W
set rmargin at screen (KV_W - @MR@) / KV_W
set tmargin at screen (KV_H - @MT@) / KV_H
set bmargin at screen (KV_H - @MT@ - @PLOT_H@) / KV_H
if (@STRIP@) {
    plot '@STEM@.dat' index 1 using 2:1 with points pt 6 ps 0.5 lc rgb '#0072B2', \
         '@STEM@.dat' index 0 using 2:1:(0):(0.32) with vectors nohead lw 2 lc rgb '#000000', \
         '@STEM@.dat' index 0 using 2:($1 - 0.32):(0):(0.32) with vectors nohead lw 2 lc rgb '#000000'
} else {
    plot '@STEM@.dat' index 0 using 2:1:3:4 with xerrorbars pt 7 ps 0.6 lc rgb '#0072B2'
}
