# kvtrace figure style (plots/style.gp), shared by every figure kvreport writes.
# Okabe-Ito palette (colour-blind safe; Okabe & Ito 2008), distinct point shapes and, from
# series 9 on, dashed lines, so that figures survive greyscale printing. Text: DejaVu Sans.
set encoding utf8
set terminal pngcairo enhanced color size @PNG_SIZE@ font 'DejaVu Sans,15' linewidth 1.5
set output '@STEM@.png'
set linetype 1 lc rgb '#0072B2' lw 2 pt 7 ps 1.4 dt 1
set linetype 2 lc rgb '#D55E00' lw 2 pt 5 ps 1.3 dt 1
set linetype 3 lc rgb '#009E73' lw 2 pt 9 ps 1.6 dt 1
set linetype 4 lc rgb '#CC79A7' lw 2 pt 11 ps 1.6 dt 1
set linetype 5 lc rgb '#E69F00' lw 2 pt 13 ps 1.5 dt 1
set linetype 6 lc rgb '#56B4E9' lw 2 pt 15 ps 1.4 dt 1
set linetype 7 lc rgb '#000000' lw 2 pt 4 ps 1.3 dt 1
set linetype 8 lc rgb '#999999' lw 2 pt 6 ps 1.4 dt 1
set linetype 9 lc rgb '#0072B2' lw 2 pt 4 ps 1.3 dt 2
set linetype 10 lc rgb '#D55E00' lw 2 pt 6 ps 1.3 dt 2
set linetype 11 lc rgb '#009E73' lw 2 pt 8 ps 1.5 dt 2
set linetype 12 lc rgb '#CC79A7' lw 2 pt 10 ps 1.5 dt 2
set linetype 13 lc rgb '#E69F00' lw 2 pt 12 ps 1.5 dt 2
set linetype 14 lc rgb '#56B4E9' lw 2 pt 14 ps 1.4 dt 2
set linetype 15 lc rgb '#000000' lw 2 pt 1 ps 1.4 dt 2
set linetype 16 lc rgb '#999999' lw 2 pt 2 ps 1.4 dt 2
set linetype cycle 16
set border 3 lw 1.2 lc rgb '#333333'
set tics nomirror out
set grid xtics ytics lc rgb '#e0e0e0' lw 1 dt 1
set key noenhanced spacing 1.15 samplen 2.5
set title font ',16'
set style fill solid 0.8 border -1
# viridis (perceptually uniform, colour-blind safe) for heat maps
set palette defined (0 '#440154', 0.25 '#3b528b', 0.5 '#21918c', 0.75 '#5ec962', 1 '#fde725')
