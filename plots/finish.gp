# PDF of the same figure (plots/finish.gp)
set terminal pdfcairo enhanced color size @PDF_SIZE@ font 'DejaVu Sans,9' linewidth 1
set output '@STEM@.pdf'
replot
unset output
