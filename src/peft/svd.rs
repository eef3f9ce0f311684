//! A thin singular value decomposition in f64 for `add_weighted_adapter`'s `svd` combination:
//! M (m, n) = U·diag(S)·Vᵀ with U (m, k), S (k) descending, V (n, k), k = min(m, n).
//!
//! One-sided Jacobi (Hestenes 1958): rotate pairs of columns of W = M (or Mᵀ when it has more
//! columns than rows) until every pair is orthogonal, accumulating the rotations in V; then
//! σ_j = ‖w_j‖ and u_j = w_j / σ_j. Each rotation zeroes the pair's inner product γ with
//! ζ = (β − α)/2γ, t = sign(ζ)/(|ζ| + √(1 + ζ²)), c = 1/√(1 + t²), s = c·t, where α = ‖w_p‖²,
//! β = ‖w_q‖². Sweeps stop when every |γ| ≤ ε·√(αβ) (ε = 1e-15), at most 60 sweeps.
//! A column with σ = 0 gets u = 0 (it contributes nothing to U·S; for a matrix with more columns
//! than rows it is v that is 0).

/// (U (m, k) row-major, S (k) descending, V (n, k) row-major) of the row-major (m, n) matrix `m`.
pub fn svd(matrix: &[f64], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    if cols > rows {
        let mut t = vec![0.0; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = matrix[r * cols + c];
            }
        }
        let (u, s, v) = svd(&t, cols, rows); // Mᵀ = U'·S·V'ᵀ, so M = V'·S·U'ᵀ
        return (v, s, u);
    }
    let (m, n) = (rows, cols);
    let mut w = matrix.to_vec(); // (m, n), columns rotated in place
    let mut v: Vec<f64> = (0..n * n).map(|i| if i / n == i % n { 1.0 } else { 0.0 }).collect();
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for r in 0..m {
                    let (x, y) = (w[r * n + p], w[r * n + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for (mat, len) in [(&mut w, m), (&mut v, n)] {
                    for r in 0..len {
                        let (x, y) = (mat[r * n + p], mat[r * n + q]);
                        mat[r * n + p] = c * x - s * y;
                        mat[r * n + q] = s * x + c * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> =
        (0..n).map(|j| (0..m).map(|r| w[r * n + j].powi(2)).sum::<f64>().sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|a, b| norms[*b].total_cmp(&norms[*a]));
    let k = n; // n ≤ m here
    let mut u = vec![0.0; m * k];
    let mut vs = vec![0.0; n * k];
    let mut s = vec![0.0; k];
    for (j, &col) in order.iter().enumerate() {
        s[j] = norms[col];
        for r in 0..m {
            u[r * k + j] = if s[j] > 0.0 { w[r * n + col] / s[j] } else { 0.0 };
        }
        for r in 0..n {
            vs[r * k + j] = v[r * n + col];
        }
    }
    (u, s, vs)
}

#[cfg(test)]
mod tests {
    use super::svd;

    /// U·S·Vᵀ rebuilds M, U and V have orthonormal columns, S descends: on a 5×3 and its 3×5
    /// transpose, and on a rank-1 matrix (zero singular values).
    #[test]
    fn rebuilds_the_matrix_with_orthonormal_factors() {
        let tall: Vec<f64> = (0..15).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let mut wide = vec![0.0; 15];
        for r in 0..5 {
            for c in 0..3 {
                wide[c * 5 + r] = tall[r * 3 + c];
            }
        }
        let rank1: Vec<f64> =
            (0..12).map(|i| ((i / 4) as f64 + 1.0) * ((i % 4) as f64 - 1.5)).collect();
        for (m, rows, cols) in [(&tall, 5, 3), (&wide, 3, 5), (&rank1, 3, 4)] {
            let (u, s, v) = svd(m, rows, cols);
            let k = s.len();
            assert_eq!(k, rows.min(cols));
            assert!(s.windows(2).all(|p| p[0] >= p[1]), "{s:?}");
            for r in 0..rows {
                for c in 0..cols {
                    let got: f64 = (0..k).map(|j| u[r * k + j] * s[j] * v[c * k + j]).sum();
                    assert!((got - m[r * cols + c]).abs() < 1e-12, "({r}, {c}): {got}");
                }
            }
            // Columns of U and V for σ > 0 are orthonormal (for σ = 0 one of them is zero).
            for (f, len) in [(&u, rows), (&v, cols)] {
                for a in (0..k).filter(|a| s[*a] > 1e-12) {
                    for b in (0..k).filter(|b| s[*b] > 1e-12) {
                        let dot: f64 = (0..len).map(|r| f[r * k + a] * f[r * k + b]).sum();
                        let want = if a == b { 1.0 } else { 0.0 };
                        assert!((dot - want).abs() < 1e-12, "[{a}, {b}] = {dot}");
                    }
                }
            }
        }
    }
}
