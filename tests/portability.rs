//! Every shader in shaders/*.wgsl must be accepted by every WebGPU implementation, not just by the
//! wgpu on this machine. Two independent WGSL front ends check it (no GPU needed):
//! - naga (wgpu's and Firefox's), as a crate: parse, validate, and write each entry point as
//!   SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL 4.50 compute (OpenGL);
//! - tint (Dawn's, Chrome's), as the `tint` binary: `tint FILE --format wgsl -o /dev/null`.
//!
//! They disagree where it matters: naga 30 accepts `workgroupBarrier()` in non-uniform control flow
//! (a hang or wrong sums on real GPUs), tint rejects it. The shader list is read at run time, so a
//! new shader is covered without touching this file.
//!
//! A missing `tint` binary is a failure, always (in CI or not): a portability test that silently
//! checks half of what it claims is worse than none. `TINT=/path/to/tint` overrides the name.

use std::path::{Path, PathBuf};
use std::process::Command;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};

/// What the engine may request from an adapter (each gated at run time on `adapter.features()`,
/// with a portable fallback). Anything else — f64, i64 — is rejected: it is not portable. A shader
/// that needs another optional feature must be added here on purpose.
fn capabilities() -> Capabilities {
    Capabilities::SHADER_FLOAT16
        | Capabilities::SUBGROUP
        | Capabilities::SUBGROUP_BARRIER
        | Capabilities::IMMEDIATES
        // unpack2x16float (core WGSL; the f16 base, shaders/linear_f16*.wgsl): wgpu gates it on
        // DownlevelFlags::SHADER_F16_IN_F32, which `WeightF16::upload` checks at run time.
        | Capabilities::SHADER_FLOAT16_IN_FLOAT32
}

fn shader_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    files
}

/// Parses and validates with naga; the module and its analysis, or the rendered error.
fn naga_validate(path: &Path, source: &str) -> Result<(naga::Module, ModuleInfo), String> {
    let name = path.display().to_string();
    let source = &*glassgrad::gpu::source_for_naga(source);
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| format!("naga parse:\n{}", e.emit_to_string_with_path(source, &name)))?;
    let info = Validator::new(ValidationFlags::all(), capabilities())
        .validate(&module)
        .map_err(|e| format!("naga validate:\n{}", e.emit_to_string_with_path(source, &name)))?;
    Ok((module, info))
}

/// Writes every compute entry point with the four naga back ends. Returns the bytes written.
fn naga_back_ends(module: &naga::Module, info: &ModuleInfo) -> Result<[usize; 4], String> {
    let stage = naga::ShaderStage::Compute;
    let mut sizes = [0usize; 4];
    // Entry point by entry point, as wgpu compiles them: entry points of one file may reuse a
    // @binding number for different variables, which is legal only per pipeline.
    for ep in &module.entry_points {
        let name = ep.name.clone();
        // SPIR-V 1.3: the first version with subgroup operations (what wgpu asks for then).
        let spv_options = spv::Options { lang_version: (1, 3), ..Default::default() };
        let spv_pipeline = spv::PipelineOptions { shader_stage: stage, entry_point: name.clone() };
        let words = spv::write_vec(module, info, &spv_options, Some(&spv_pipeline))
            .map_err(|e| format!("{name}: SPIR-V: {e}"))?;
        sizes[0] += words.len() * 4;

        // MSL 2.4 (macOS 12 / iOS 15): has simdgroup (subgroup) functions and half.
        let msl_options = msl::Options { lang_version: (2, 4), ..Default::default() };
        let msl_pipeline =
            msl::PipelineOptions { entry_point: Some((stage, name.clone())), ..Default::default() };
        let (metal, _) = msl::write_string(module, info, &msl_options, &msl_pipeline)
            .map_err(|e| format!("{name}: MSL: {e}"))?;
        sizes[1] += metal.len();

        // HLSL shader model 6.2: wave (subgroup) intrinsics and 16-bit types, as DX12 via DXC.
        let hlsl_options =
            hlsl::Options { shader_model: hlsl::ShaderModel::V6_2, ..Default::default() };
        let hlsl_pipeline = hlsl::PipelineOptions { entry_point: Some((stage, name.clone())) };
        let mut hlsl_text = String::new();
        hlsl::Writer::new(&mut hlsl_text, &hlsl_options, &hlsl_pipeline)
            .write(module, info, None)
            .map_err(|e| format!("{name}: HLSL: {e}"))?;
        sizes[2] += hlsl_text.len();

        // GLSL has no 16-bit floats (naga's GLSL writer refuses them, and wgpu's GL backend
        // never offers SHADER_F16): a shader with f16 types (`enable f16;`) runs only on
        // adapters with that feature, the Rust side checks it, and this one back end is skipped.
        if uses_f16(module) {
            continue;
        }
        // GLSL 4.50 core: compute shaders and std430 storage buffers, one entry point per file
        // (GLSL has a single `main`).
        let glsl_options =
            glsl::Options { version: glsl::Version::Desktop(450), ..Default::default() };
        let glsl_pipeline = glsl::PipelineOptions {
            shader_stage: stage,
            entry_point: name.clone(),
            multiview: None,
        };
        let mut glsl_text = String::new();
        glsl::Writer::new(
            &mut glsl_text,
            module,
            info,
            &glsl_options,
            &glsl_pipeline,
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write())
        .map_err(|e| format!("{name}: GLSL 4.50: {e}"))?;
        sizes[3] += glsl_text.len();
    }
    Ok(sizes)
}

/// Whether the module declares an f16 scalar or vector type.
fn uses_f16(module: &naga::Module) -> bool {
    let f16 = |s: naga::Scalar| s.kind == naga::ScalarKind::Float && s.width == 2;
    module.types.iter().any(|(_, t)| match t.inner {
        naga::TypeInner::Scalar(s) | naga::TypeInner::Vector { scalar: s, .. } => f16(s),
        _ => false,
    })
}

/// Runs tint on a file: Ok, or its error output (with line and column).
fn tint(path: &Path) -> Result<(), String> {
    let bin = std::env::var("TINT").unwrap_or_else(|_| "tint".into());
    let out = Command::new(&bin).arg(path).args(["--format", "wgsl", "-o", "/dev/null"]).output().map_err(|e| {
        format!(
            "cannot run `{bin}` ({e}). Dawn's WGSL compiler `tint` must be on the PATH (or set TINT=/path/to/tint): \
             without it the shaders are checked by naga alone, which accepts non-portable WGSL (CI={})",
            std::env::var("CI").unwrap_or_default()
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tint ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_shader_passes_naga_back_ends_and_tint() {
    let files = shader_files();
    assert!(!files.is_empty(), "no shaders found under shaders/");
    let mut failures = vec![];
    for path in &files {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(path).unwrap();
        let naga_result = naga_validate(path, &source).and_then(|(module, info)| {
            let sizes = naga_back_ends(&module, &info)?;
            Ok((module.entry_points.len(), sizes))
        });
        let tint_result = tint(path);
        match (naga_result, tint_result) {
            (Ok((entries, [spv, metal, hlsl, glsl])), Ok(())) => println!(
                "OK {file:<20} {entries:>2} entry points  naga: SPIR-V {spv} B, MSL {metal} B, HLSL {hlsl} B, GLSL {glsl} B  tint: ok"
            ),
            (naga_result, tint_result) => {
                if let Err(e) = naga_result {
                    failures.push(format!("{file}: {e}"));
                }
                if let Err(e) = tint_result {
                    failures.push(format!("{file}: {e}"));
                }
            }
        }
    }
    println!("{} shaders checked", files.len());
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

/// The check has teeth: a barrier under a data-dependent `if` is rejected by tint.
#[test]
fn tint_rejects_a_barrier_in_non_uniform_control_flow() {
    let source = r#"
@group(0) @binding(0) var<storage, read_write> b: array<f32>;
var<workgroup> tile: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (b[lid] > 0.0) {           // depends on data: not every invocation gets here
        tile[lid] = b[lid];
        workgroupBarrier();       // so this barrier is undefined behaviour
        b[lid] = tile[63u - lid];
    }
}
"#;
    let path = std::env::temp_dir()
        .join(format!("glassgrad_nonuniform_barrier_{}.wgsl", std::process::id()));
    std::fs::write(&path, source).unwrap();
    let naga_verdict = match naga_validate(&path, source) {
        Ok(_) => "accepted".to_string(),
        Err(e) => format!("rejected ({})", e.lines().next().unwrap_or("")),
    };
    println!("naga on a barrier in non-uniform control flow: {naga_verdict}");
    let result = tint(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(()) => panic!("tint accepted workgroupBarrier() inside non-uniform control flow"),
        Err(e) if e.contains("cannot run") => panic!("{e}"),
        Err(e) => {
            println!("tint rejects it: {}", e.lines().nth(1).unwrap_or(&e));
            assert!(
                e.contains("uniform control flow"),
                "tint failed, but not for uniformity:\n{e}"
            );
        }
    }
}
