//! Gradient checks for every op in `glassgrad::ops::ALL_OPS`, at shapes that are not multiples
//! of any tile (1, 3, 17, 65, 130).

use std::collections::BTreeMap;

use glassgrad::cpu::Rng;
use glassgrad::ops::{self, binary::cpu as bin, reduce::cpu as red, unary::cpu as un};

use crate::gpu::harness::{Case, REDUCTION, Tol, check, gpu};

/// Odd shapes every elementwise op is checked at.
const SHAPES: &[&[usize]] = &[&[1], &[3, 17], &[2, 65], &[130, 3]];

/// Shapes whose numel and last dim are multiples of 4: they select the vec4 kernels (SHAPES select
/// the scalar ones). Rows not a multiple of the 4 rows per thread, [2, 3, 4] one vec4 per row, and
/// [33, 132] more than one workgroup (1,089 vec4s > 256 threads · 4).
const VEC4_SHAPES: &[&[usize]] = &[&[5, 12], &[2, 3, 4], &[33, 132]];

fn binary_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    // Equal shapes run the same4 kernel on VEC4_SHAPES, the row broadcast bcast4.
    for shape in SHAPES.iter().chain(VEC4_SHAPES) {
        // b is either the full shape or its last dimension (bias broadcast).
        let row = &shape[shape.len() - 1..];
        for b_shape in [*shape, row] {
            let a = rng.array(shape, -2.0, 2.0);
            let b = rng.array(b_shape, -2.0, 2.0);
            // div: keep |b| ≥ 0.5 so the finite differences stay far from the pole.
            let b_div = b.map(|v| if v >= 0.0 { v + 0.5 } else { v - 0.5 });
            cases.push(
                Case::new(
                    "add",
                    vec![a.clone(), b.clone()],
                    Box::new(|t| t[0].add(&t[1])),
                    Box::new(|x| bin::add(&x[0], &x[1])),
                    Box::new(|x, d| bin::add_backward(&x[0], &x[1], d)),
                )
                .tol(REDUCTION),
            );
            cases.push(
                Case::new(
                    "sub",
                    vec![a.clone(), b.clone()],
                    Box::new(|t| t[0].sub(&t[1])),
                    Box::new(|x| bin::sub(&x[0], &x[1])),
                    Box::new(|x, d| bin::sub_backward(&x[0], &x[1], d)),
                )
                .tol(REDUCTION),
            );
            cases.push(
                Case::new(
                    "mul",
                    vec![a.clone(), b.clone()],
                    Box::new(|t| t[0].mul(&t[1])),
                    Box::new(|x| bin::mul(&x[0], &x[1])),
                    Box::new(|x, d| bin::mul_backward(&x[0], &x[1], d)),
                )
                .tol(REDUCTION),
            );
            cases.push(
                Case::new(
                    "div",
                    vec![a.clone(), b_div],
                    Box::new(|t| t[0].div(&t[1])),
                    Box::new(|x| bin::div(&x[0], &x[1])),
                    Box::new(|x, d| bin::div_backward(&x[0], &x[1], d)),
                )
                .tol(REDUCTION),
            );
        }
    }
    cases
}

fn unary_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    // SHAPES run the scalar kernels, VEC4_SHAPES the vec4 ones.
    for shape in SHAPES.iter().chain(VEC4_SHAPES) {
        let x = rng.array(shape, -3.0, 3.0);
        let positive = rng.array(shape, 0.1, 3.0);
        // relu: keep inputs away from the kink at 0, where finite differences are meaningless.
        let away = x.map(|v| if v.abs() < 0.05 { v + 0.1 } else { v });
        cases.push(Case::new(
            "neg",
            vec![x.clone()],
            Box::new(|t| t[0].neg()),
            Box::new(|x| un::neg(&x[0])),
            Box::new(|x, d| vec![un::neg_backward(&x[0], d)]),
        ));
        cases.push(Case::new(
            "scale",
            vec![x.clone()],
            Box::new(|t| t[0].scale(-1.75)),
            Box::new(|x| un::scale(&x[0], -1.75)),
            Box::new(|x, d| vec![un::scale_backward(&x[0], d, -1.75)]),
        ));
        cases.push(Case::new(
            "exp",
            vec![x.clone()],
            Box::new(|t| t[0].exp()),
            Box::new(|x| un::exp(&x[0])),
            Box::new(|x, d| vec![un::exp_backward(&x[0], d)]),
        ));
        cases.push(Case::new(
            "sqrt",
            vec![positive.clone()],
            Box::new(|t| t[0].sqrt()),
            Box::new(|x| un::sqrt(&x[0])),
            Box::new(|x, d| vec![un::sqrt_backward(&x[0], d)]),
        ));
        cases.push(Case::new(
            "log",
            vec![positive],
            Box::new(|t| t[0].log()),
            Box::new(|x| un::log(&x[0])),
            Box::new(|x, d| vec![un::log_backward(&x[0], d)]),
        ));
        cases.push(Case::new(
            "tanh",
            vec![x.clone()],
            Box::new(|t| t[0].tanh()),
            Box::new(|x| un::tanh(&x[0])),
            Box::new(|x, d| vec![un::tanh_backward(&x[0], d)]),
        ));
        cases.push(Case::new(
            "relu",
            vec![away],
            Box::new(|t| t[0].relu()),
            Box::new(|x| un::relu(&x[0])),
            Box::new(|x, d| vec![un::relu_backward(&x[0], d)]),
        ));
        cases.push(Case::new(
            "gelu",
            vec![x.clone()],
            Box::new(|t| t[0].gelu()),
            Box::new(|x| un::gelu(&x[0])),
            Box::new(|x, d| vec![un::gelu_backward(&x[0], d)]),
        ));
    }
    cases
}

fn reduce_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    // Sums of up to 5000 f32 terms in [-1, 1]: rounding grows like √n·ε·max|x| ≈ 4e-6 whatever
    // the sum is (it can cancel to near 0), hence atol 1e-5; relative to the largest output
    // (~40 for sum_all of 5000) measured ≤ 1.4e-6, rtol 1e-4 for other summation orders.
    let tol = Tol { atol: 1e-5, rtol: 1e-4 };
    for shape in [&[1usize][..], &[17], &[3, 17], &[2, 3, 65], &[130, 17], &[5000]] {
        let x = rng.array(shape, -1.0, 1.0);
        cases.push(
            Case::new(
                "sum_last",
                vec![x.clone()],
                Box::new(|t| t[0].sum_last()),
                Box::new(|x| red::sum_last(&x[0])),
                Box::new(|x, d| vec![red::sum_last_backward(&x[0], d)]),
            )
            .tol(tol),
        );
        cases.push(
            Case::new(
                "mean_last",
                vec![x.clone()],
                Box::new(|t| t[0].mean_last()),
                Box::new(|x| red::mean_last(&x[0])),
                Box::new(|x, d| vec![red::mean_last_backward(&x[0], d)]),
            )
            .tol(tol),
        );
        cases.push(
            Case::new(
                "sum_all",
                vec![x.clone()],
                Box::new(|t| t[0].sum_all()),
                Box::new(|x| red::sum_all(&x[0])),
                Box::new(|x, d| vec![red::sum_all_backward(&x[0], d)]),
            )
            .tol(tol),
        );
        cases.push(
            Case::new(
                "mean_all",
                vec![x.clone()],
                Box::new(|t| t[0].mean_all()),
                Box::new(|x| red::mean_all(&x[0])),
                Box::new(|x, d| vec![red::mean_all_backward(&x[0], d)]),
            )
            .tol(tol),
        );
    }
    // C % 4 != 0: the scalar kernel. C % 4 == 0: sum_rows4, in one pass (R ≤ 64 rows) or two
    // (R > 64: partial sums of 64-row chunks, the last one short, then their sum).
    for shape in [[1usize, 1], [17, 3], [3, 65], [130, 17], [3, 8], [65, 4], [130, 12]] {
        let x = rng.array(&shape, -1.0, 1.0);
        cases.push(
            Case::new(
                "sum_rows",
                vec![x],
                Box::new(|t| t[0].sum_rows()),
                Box::new(|x| red::sum_rows(&x[0])),
                Box::new(|x, d| vec![red::sum_rows_backward(&x[0], d)]),
            )
            .tol(tol),
        );
    }
    // reshape: a view; its gradient is dout in the input's shape.
    let x = rng.array(&[3, 17], -1.0, 1.0);
    cases.push(Case::new(
        "reshape",
        vec![x],
        Box::new(|t| t[0].reshape(&[17, 3])),
        Box::new(|x| x[0].reshape(&[17, 3])),
        Box::new(|x, d| vec![d.reshape(&x[0].shape)]),
    ));
    cases
}

/// bias_gelu on shapes with C % 4 == 0, which select its vec4 kernels (the odd-C cases in
/// transformer.rs cover the scalar ones).
fn bias_gelu_vec4_cases(rng: &mut Rng) -> Vec<Case> {
    use glassgrad::ops::bias_gelu::cpu as bg;
    // As transformer.rs (ROWS): a tanh and a row sum of up to 33 terms for dbias, ~1e-6 of the
    // largest (measured ≤ 5.5e-7); atol as harness::ELEMENTWISE.
    let tol = Tol { atol: 1e-7, rtol: 1e-4 };
    let mut cases = vec![];
    for shape in VEC4_SHAPES {
        let c = shape[shape.len() - 1];
        let x = rng.array(shape, -3.0, 3.0);
        let b = rng.array(&[c], -1.0, 1.0);
        cases.push(
            Case::new(
                "bias_gelu",
                vec![x, b],
                Box::new(|t| t[0].bias_gelu(&t[1])),
                Box::new(|x| bg::bias_gelu(&x[0], &x[1])),
                Box::new(|x, d| bg::bias_gelu_backward(&x[0], &x[1], d)),
            )
            .tol(tol),
        );
    }
    cases
}

/// permute cases for the vec4 run kernel and the dim coalescing (attention.rs has the scalar
/// odd-size ones). permute4: last dim kept and % 4 == 0; scalar: last dim moved or odd.
fn permute_cases(rng: &mut Rng) -> Vec<Case> {
    use glassgrad::ops::permute::cpu as pm;
    let specs: [(&[usize], &[usize]); 5] = [
        (&[3, 5, 36], &[1, 0, 2]), // permute4, 9 vec4s per row: one full run of 8 + one of 1
        (&[2, 3, 1, 4, 8], &[3, 0, 2, 1, 4]), // permute4, a size-1 dim dropped
        (&[5, 7, 8], &[0, 1, 2]),  // identity: one dim of 70 vec4s
        (&[4, 3, 5, 7], &[0, 2, 3, 1]), // scalar, dims 5 and 7 merged
        (&[2, 4, 4], &[0, 2, 1]),  // scalar: the last dim moves
    ];
    let mut cases = vec![];
    for (shape, perm) in specs {
        let x = rng.array(shape, -1.0, 1.0);
        let (p1, p2, p3) = (perm.to_vec(), perm.to_vec(), perm.to_vec());
        cases.push(Case::new(
            "permute",
            vec![x],
            Box::new(move |t| t[0].permute(&p1)),
            Box::new(move |x| pm::permute(&x[0], &p2)),
            Box::new(move |x, d| vec![pm::permute_backward(&x[0], d, &p3)]),
        ));
    }
    cases
}

/// All cases, every op.
/// `autograd::checkpoint` as an op: y = tanh(a ⊙ b) run without a tape, recomputed in backward.
/// Its gradient must be the plain chain rule: da = (1 − y²)·b·dout, db = (1 − y²)·a·dout.
fn checkpoint_cases(rng: &mut Rng) -> Vec<Case> {
    let mut cases = vec![];
    for shape in [&[1][..], &[3, 17], &[2, 65]] {
        let (a, b) = (rng.array(shape, -2.0, 2.0), rng.array(shape, -2.0, 2.0));
        cases.push(Case::new(
            "checkpoint",
            vec![a, b],
            Box::new(|t| {
                glassgrad::autograd::checkpoint(&[&t[0], &t[1]], &[], |i| i[0].mul(&i[1])?.tanh())
            }),
            Box::new(|x| un::tanh(&bin::mul(&x[0], &x[1]))),
            Box::new(|x, d| {
                let ab = bin::mul(&x[0], &x[1]);
                let d_ab = un::tanh_backward(&ab, d);
                bin::mul_backward(&x[0], &x[1], &d_ab)
            }),
        ));
    }
    cases
}

pub fn all_cases() -> Vec<Case> {
    let mut rng = Rng::new(20261122);
    let mut cases = binary_cases(&mut rng);
    cases.extend(unary_cases(&mut rng));
    cases.extend(reduce_cases(&mut rng));
    cases.extend(bias_gelu_vec4_cases(&mut rng));
    cases.extend(permute_cases(&mut rng));
    cases.extend(crate::shape::cases(&mut rng));
    cases.extend(crate::matmul::cases(&mut rng));
    cases.extend(crate::big::cases(&mut rng));
    cases.extend(crate::lora_linear::cases(&mut rng));
    cases.extend(crate::transformer::cases(&mut rng));
    cases.extend(crate::attention::cases(&mut rng));
    cases.extend(checkpoint_cases(&mut rng));
    cases.extend(crate::quant::cases(&mut rng));
    cases.extend(crate::scatter::cases(&mut rng));
    cases.extend(crate::qlora::cases(&mut rng));
    cases.extend(crate::base_f16::cases(&mut rng));
    cases
}

/// Every op name recorded on the tape, read from the sources, with the file it is in: the first
/// argument of each `.attach(` in src/. That is a string literal, a name bound to literals in
/// the same function (`let op = "layernorm";`, `const OP: &str = …;`, `let op = if … { "matmul_t" }
/// else { "matmul" };`), or a `&str` parameter of that function, read at its callers in the file.
fn attached_op_names() -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        // Comments dropped line by line (doc comments show `out.attach(op, …)` too).
        let code: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| if l.trim_start().starts_with("//") { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let file = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string();
        for (at, _) in code.match_indices(".attach(") {
            let arg = first_argument(&code[at + ".attach(".len()..]);
            let found = op_names(&code, at, arg, 0);
            assert!(
                !found.is_empty(),
                "{file}: cannot read the op name `{arg}` given to attach; write it as a literal or \
                 `let op = \"…\";` in the same function"
            );
            for name in found {
                names.insert(name, file.clone());
            }
        }
    }
    names
}

/// The text of a call's first argument, given what follows its `(`.
fn first_argument(rest: &str) -> &str {
    rest[..rest.find([',', ')']).unwrap_or(rest.len())].trim()
}

/// The string literals in `text`.
fn literals(text: &str) -> Vec<String> {
    text.split('"').skip(1).step_by(2).map(str::to_string).collect()
}

/// The op names `arg`, an argument written at byte `at` of `code`, can hold (see
/// `attached_op_names`); empty when they cannot be read.
fn op_names(code: &str, at: usize, arg: &str, depth: usize) -> Vec<String> {
    if arg.starts_with('"') {
        return literals(arg);
    }
    if arg.is_empty() || !arg.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return vec![];
    }
    let Some(fn_at) = code[..at].rfind("fn ") else { return vec![] };
    let body = &code[fn_at..at];
    for binding in [format!("let {arg} ="), format!("const {arg}:")] {
        if let Some(b) = body.find(&binding) {
            let statement = &body[b..b + body[b..].find(';').unwrap_or(body.len() - b)];
            return literals(statement);
        }
    }
    // A parameter of the enclosing function: what its callers in this file pass.
    let signature = &body[..body.find('{').unwrap_or(body.len())];
    let name = &signature[3..signature.find('(').unwrap_or(3)];
    if depth > 2 || !signature.contains(&format!("{arg}: &")) {
        return vec![];
    }
    let mut names = vec![];
    for (call, _) in code.match_indices(&format!("{name}(")) {
        let before = &code[..call];
        if before.ends_with("fn ")
            || before.ends_with(|c: char| c.is_alphanumeric() || "_.".contains(c))
        {
            continue; // the definition, a longer name that ends in this one, or a method
        }
        let arg = first_argument(&code[call + name.len() + 1..]);
        names.extend(op_names(code, call, arg, depth + 1));
    }
    names
}

#[test]
fn every_op_recorded_on_the_tape_is_listed_and_has_a_gradient_check() {
    let attached = attached_op_names();
    let unlisted: Vec<_> =
        attached.iter().filter(|(name, _)| !ops::ALL_OPS.contains(&name.as_str())).collect();
    assert!(unlisted.is_empty(), "ops recorded by attach but missing from ALL_OPS: {unlisted:?}");
    // The rest of ALL_OPS must be composed of attached ones: a method of that name in src/ops/.
    let ops_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ops");
    let sources: String = std::fs::read_dir(ops_dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let stale: Vec<_> = ops::ALL_OPS
        .iter()
        .filter(|op| !attached.contains_key(**op) && !sources.contains(&format!("pub fn {op}(")))
        .collect();
    assert!(
        stale.is_empty(),
        "ALL_OPS names ops that are neither attached nor composed: {stale:?}"
    );
    let cases = all_cases();
    let missing: Vec<_> =
        ops::ALL_OPS.iter().filter(|op| !cases.iter().any(|c| c.op == **op)).collect();
    assert!(missing.is_empty(), "ops without a gradient check: {missing:?}");
    println!(
        "{} ops attached in src/, all listed; {} listed, all gradient-checked",
        attached.len(),
        ops::ALL_OPS.len()
    );
}

#[test]
fn gradient_checks() {
    let gpu = gpu();
    let cases = all_cases();
    let mut failures = vec![];
    for (i, case) in cases.iter().enumerate() {
        match check(&gpu, case, 1000 + i as u64) {
            Ok(report) => println!("{report}"),
            Err(e) => failures.push(e),
        }
    }
    let ops: std::collections::BTreeSet<_> = cases.iter().map(|c| c.op).collect();
    println!("{} cases, {} ops checked", cases.len(), ops.len());
    assert!(
        failures.is_empty(),
        "{} of {} gradient checks failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
