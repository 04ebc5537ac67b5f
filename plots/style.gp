# kvtrace figure style (plots/style.gp), shared by every figure kvreport writes.
# Size presets: one column (3.3 in) or two columns (6.9 in) wide, 8 pt text (key 7 pt);
# the PNG is the same figure at @DPI@ dpi (fonts, lines and points scaled alike), the PDF
# is vector. At most 8 series per panel: 8 Okabe-Ito colours (Okabe & Ito 2008; yellow
# replaced by grey for contrast on white), each with its own marker shape (filled, then
# open), so that a figure survives greyscale printing.
set encoding utf8
set linetype 1 lc rgb '#0072B2' lw 1.2 pt 7 ps 0.55 dt 1
set linetype 2 lc rgb '#D55E00' lw 1.2 pt 5 ps 0.5 dt 1
set linetype 3 lc rgb '#009E73' lw 1.2 pt 9 ps 0.65 dt 1
set linetype 4 lc rgb '#CC79A7' lw 1.2 pt 11 ps 0.65 dt 1
set linetype 5 lc rgb '#E69F00' lw 1.2 pt 13 ps 0.65 dt 1
set linetype 6 lc rgb '#56B4E9' lw 1.2 pt 6 ps 0.6 dt 1
set linetype 7 lc rgb '#000000' lw 1.2 pt 4 ps 0.55 dt 1
set linetype 8 lc rgb '#999999' lw 1.2 pt 8 ps 0.65 dt 1
set linetype cycle 8
set border 3 lw 0.8 lc rgb '#333333'
set tics nomirror out scale 0.6
set grid xtics ytics lc rgb '#e6e6e6' lw 0.6 dt 1
set key noenhanced spacing 1.0 samplen 1.6 font ',7'
set title font ',8'
set style fill solid 0.8 border -1
# viridis (perceptually uniform, colour-blind safe) for heat maps
set palette defined (0 '#440154', 0.25 '#3b528b', 0.5 '#21918c', 0.75 '#5ec962', 1 '#fde725')
# figure size in inches
KV_W = @W_IN@
KV_H = @H_IN@
do for [kv_out = 1:2] {
if (kv_out == 1) {
    set terminal pngcairo enhanced color size @PNG_W@,@PNG_H@ font 'DejaVu Sans,8' fontscale @SCALE@ linewidth @SCALE@ pointscale @SCALE@
    set output '@STEM@.png'
} else {
    set terminal pdfcairo enhanced color size @W_IN@in,@H_IN@in font 'DejaVu Sans,8' linewidth 1
    set output '@STEM@.pdf'
}
