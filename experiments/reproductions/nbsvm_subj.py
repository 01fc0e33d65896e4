"""NBSVM-bi on SUBJ (subjective vs objective sentences), 10-fold cross-validation: 93.2."""

from experiments.reproductions import KIM_2014, NBSVM_BI, WANG_MANNING_2012, Reproduction

ENTRY = Reproduction(
    WANG_MANNING_2012, where="Table 3 (long reviews, Subj. for comparison), row NBSVM-bi, "
    f"column Subj.: 93.18; also {KIM_2014}, Table 2, row NBSVM, column Subj: 93.2",
    published=93.2, method=NBSVM_BI, config="configs/linear.py:nbsvm", pool="subj:all")
get_sweep = ENTRY.get_sweep
