# (a) Quality vs compression (plots/pareto.gp): panels of at most 8 lines; each line varies
# one parameter of one family (mean over sequences, bootstrap 95% interval bars); by default
# one panel, the best line of each of the 8 families nearest the front (kvreport
# --pareto-all: every line); ringed points are Pareto-optimal (differences within
# overlapping intervals do not count).
# @STEM@.dat: blocks 0..@NS@-1 = lines, rows "ratio value lo hi config_id" sorted by ratio;
# block @NS@ = the Pareto-optimal points, rows "ratio value config_id panel".
array ptitle[@NP@] = [@PTITLES@]
array pfirst[@NP@] = [@PFIRST@]
array plast[@NP@] = [@PLAST@]
array stitle[@NS@] = [@STITLES@]
array ktitle[@NP@] = [@KTITLES@]
set xlabel 'compression ratio' offset 0,0.4
set ylabel '@YLABEL@' offset 0.2,0
set logscale x 2
set format x '%g×'
set xrange [@XRANGE@]
set yrange [@YRANGE@]
@YAXIS@
set multiplot
do for [p=1:@NP@] {
    col = (p - 1) % @NCOL@
    row = (p - 1) / @NCOL@
    x0 = col * @PW@
    y1 = KV_H - row * @PH@
    set lmargin at screen (x0 + @ML@) / KV_W
    set rmargin at screen (x0 + @PW@ - @MR@) / KV_W
    set tmargin at screen (y1 - @MT@) / KV_H
    set bmargin at screen (y1 - @MT@ - @PLOT_H@) / KV_H
    set key at screen (x0 + 0.08) / KV_W, (y1 - @MT@ - @PLOT_H@ - @AXIS_H@) / KV_H left top Left reverse vertical maxrows (@KEYROWS@ - 1) width -1 title ktitle[p] left
    set title ptitle[p] noenhanced offset 0,-0.7
    plot for [i=pfirst[p]:plast[p]] '@STEM@.dat' index (i-1) using 1:2:3:4 with yerrorlines lt (i-pfirst[p]+1) title stitle[i], \
         '@STEM@.dat' index @NS@ using 1:($4 == p ? $2 : NaN) with points pt 6 ps 1.6 lw 0.8 lc rgb '#000000' title 'Pareto-optimal'
}
