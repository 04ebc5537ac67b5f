# (g) Strategies at matched compression (plots/ranked.gp): per family the configuration
# nearest the target ratio, ranked best first, mean over sequences with 95% t-interval bars.
# @STEM@.dat: rows "rank mean t_lo t_hi ratio label".
set title '@TITLE@' noenhanced
set ylabel '@YLABEL@'
set xrange [-0.6:@XMAX@]
set yrange [@YLO@:*]
set boxwidth 0.6
set style fill solid 0.75 border -1
set xtics rotate by -30 left noenhanced font ',12'
set grid noxtics ytics
set bmargin 11
set rmargin 10
plot '@STEM@.dat' using 0:2:3:4:(0.6):xtic(6) with boxerrorbars linetype 1 notitle
