# end of the figure (plots/finish.gp): the block above runs twice, PNG then PDF
unset multiplot
unset output
}
