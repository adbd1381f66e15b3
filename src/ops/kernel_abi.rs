//! The kernel ABI: every number and layout that the host code and the CUDA kernels
//! (`kernels/*.cu`) must agree on, written once, here.
//!
//! build.rs compiles this file on its own (`#[path]`, so it uses nothing of the crate) and
//! generates from it
//! - `kernel_abi.cuh`, which every kernel file that needs one of these includes: the
//!   constants below as `#define`s and `struct GemmArgs`, field for field;
//! - the GEMM kernels of [`GEMM_FAMILIES`] (one `__global__` wrapper per family, tile shape
//!   and load width), appended to the kernel file each family names.
//!
//! The host code uses the same constants and types, so neither side can drift from the
//! other: a change here changes both.

/// Defines the shared integer constants and [`CONSTANTS`], their list for the C header.
macro_rules! shared_constants {
    ($( $(#[doc = $doc:literal])* $name:ident: $ty:ty = $value:expr; )*) => {
        $( $(#[doc = $doc])* pub const $name: $ty = $value; )*
        /// Every constant of this module as `(name, value, doc)`, for the C header.
        pub const CONSTANTS: &[(&str, i64, &str)] = &[
            $( (stringify!($name), $value as i64, concat!($($doc, "\n"),*)) ),*
        ];
    };
}

shared_constants! {
    // ---- launch shapes
    /// Threads per block of every GEMM kernel (each tile shape's `(BM/TM) * (BN/TN)`).
    GEMM_THREADS: u32 = 256;
    /// K depth of every GEMM tile's shared-memory slice; split-K chunks are multiples of it.
    GEMM_BK: usize = 16;
    /// Elements per vector load of the GEMM loaders' `_v` kernels (one float4).
    GEMM_VECTOR_WIDTH: usize = 4;
    /// Rows per block of the row kernels (loss and softmax): one warp per row.
    ROWS_PER_BLOCK: usize = 4;
    /// Threads of the one-block loss reduction (`loss_reduce`).
    LOSS_REDUCE_THREADS: u32 = 256;
    /// Partial sums per row the loss row kernels write (three sums and a flag).
    LOSS_TERMS_PER_ROW: usize = 4;
    /// Threads per block of the Adam update.
    ADAM_THREADS: u32 = 256;
    /// Threads of the one-block step counter (`count_step`).
    COUNT_THREADS: u32 = 256;
    /// Threads per block of the batch gather (`gather_batch_u8`).
    BATCH_THREADS: u32 = 256;
    /// Bit 31 of a batch entry of the gather kernel: mirror the image.
    FLIP_BIT: u32 = 1 << 31;

    // ---- the step counters (a double array on the device; integers are exact below 2^53)
    /// The loss summed as loss * batch per step.
    COUNTER_LOSS_SUM: usize = 0;
    /// Correctly classified images.
    COUNTER_CORRECT: usize = 1;
    /// Images counted.
    COUNTER_SEEN: usize = 2;
    /// The first failed step + 1 (0: none).
    COUNTER_FAILED_STEP: usize = 3;
    /// What failed: a `FAILURE_*` value.
    COUNTER_FAILURE: usize = 4;
    /// Counters in all.
    COUNTER_COUNT: usize = 5;
    /// `COUNTER_FAILURE`: the loss is not finite.
    FAILURE_LOSS_NOT_FINITE: usize = 1;
    /// `COUNTER_FAILURE`: the loss's inputs are not finite.
    FAILURE_BAD_INPUTS: usize = 2;
}

/// Defines a `#[repr(C)]` argument struct and its C declaration (`C_FIELDS`), field for field.
macro_rules! kernel_struct {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* pub $field:ident: $ty:ty => $c:literal, )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl $name {
            /// The C declaration of each field, in order, with its doc, for the C header.
            pub const C_FIELDS: &[(&str, &str)] = &[$( ($c, concat!($($doc),*)) ),*];
        }
    };
}

kernel_struct! {
    /// The arguments of every GEMM-shaped kernel (`struct GemmArgs` of the generated
    /// `kernel_abi.cuh`): six device pointers, then an even number of `int`s, so that neither
    /// C nor Rust inserts padding.
    pub struct GemmArgs {
        /// A's source (matrix, image or output gradient).
        pub a: u64 => "const float* a",
        /// B's source (matrix or kernel).
        pub b: u64 => "const float* b",
        /// Added per column n in the epilogue, or null.
        pub bias: u64 => "const float* bias",
        /// Rows m < m_split of C (row stride ldo).
        pub out: u64 => "float* out",
        /// Rows m >= m_split of C, from row 0 (the bias-gradient row).
        pub out2: u64 => "float* out2",
        /// The split-K workspace [splits][M][N], or null: write C directly.
        pub partial: u64 => "float* partial",
        pub m: i32 => "int M",
        pub n: i32 => "int N",
        pub k: i32 => "int K",
        pub lda: i32 => "int lda",
        pub ldb: i32 => "int ldb",
        pub ldo: i32 => "int ldo",
        /// The first row that goes to out2 (M when none does).
        pub m_split: i32 => "int m_split",
        /// The A row that is all ones (a bias-gradient row), or -1.
        pub ones_row: i32 => "int ones_row",
        /// Apply ReLU after the bias.
        pub relu: i32 => "int relu",
        /// K per blockIdx.z, a multiple of GEMM_BK.
        pub k_chunk: i32 => "int k_chunk",
        /// Convolution geometry (NHWC activations, HWIO kernels, stride 1).
        pub batch: i32 => "int batch",
        pub in_h: i32 => "int in_h",
        pub in_w: i32 => "int in_w",
        pub in_c: i32 => "int in_c",
        pub out_h: i32 => "int out_h",
        pub out_w: i32 => "int out_w",
        pub out_c: i32 => "int out_c",
        pub kernel_h: i32 => "int kernel_h",
        pub kernel_w: i32 => "int kernel_w",
        pub pad_top: i32 => "int pad_top",
        pub pad_left: i32 => "int pad_left",
        /// Padding to an even number of ints.
        pub unused: i32 => "int unused_",
    }
}

/// A tile shape of the GEMM core (kernels/gemm_tile.cuh): each block computes a `bm x bn`
/// tile of C, each of its [`GEMM_THREADS`] threads a `tm x tn` sub-tile in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTile {
    /// The kernel-name suffix, e.g. `n16`.
    pub name: &'static str,
    pub bm: usize,
    pub bn: usize,
    pub tm: usize,
    pub tn: usize,
}

impl GemmTile {
    /// The C++ type of the tile (`Tile<BM, BN, BK, TM, TN>` of gemm_tile.cuh).
    pub fn cuda_type(&self) -> String {
        format!(
            "Tile<{}, {}, {}, {}, {}>",
            self.bm, self.bn, GEMM_BK, self.tm, self.tn
        )
    }
}

/// Many output pixels, few channels (16 columns).
pub const N16: GemmTile = tile("n16", 128, 16, 4, 2);
/// Convolutions with up to 32 channels.
pub const N32: GemmTile = tile("n32", 128, 32, 4, 4);
/// Convolutions with more channels.
pub const N64: GemmTile = tile("n64", 128, 64, 8, 4);
/// Small M and N (filter gradients, small batches).
pub const S32: GemmTile = tile("s32", 32, 32, 2, 2);
/// Medium M and N.
pub const S64: GemmTile = tile("s64", 64, 64, 4, 4);
/// M > 32, N <= 32 (filter gradients of narrow layers).
pub const M64N32: GemmTile = tile("m64n32", 64, 32, 4, 2);
/// M <= 32, N > 32 (dense layers at batch <= 32).
pub const M32N64: GemmTile = tile("m32n64", 32, 64, 2, 4);

/// Every tile shape.
pub const GEMM_TILES: [GemmTile; 7] = [N16, N32, N64, S32, S64, M64N32, M32N64];

/// A tile, checked at compile time to have [`GEMM_THREADS`] threads.
const fn tile(name: &'static str, bm: usize, bn: usize, tm: usize, tn: usize) -> GemmTile {
    assert!(
        bm.is_multiple_of(tm) && bn.is_multiple_of(tn),
        "tile not divisible by its thread tile"
    );
    assert!(
        (bm / tm) * (bn / tn) == GEMM_THREADS as usize,
        "a GEMM tile must have GEMM_THREADS threads"
    );
    GemmTile {
        name,
        bm,
        bn,
        tm,
        tn,
    }
}

/// A family of GEMM kernels: one per tile shape and load width, named
/// `{prefix}_{tile}_{s|v}` (scalar or float4 loads), in `kernel_file` under `kernels/`. Its
/// one-thread-per-output reference is `{prefix}_naive` (hand-written, in a `*_naive.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmFamily {
    pub prefix: &'static str,
    pub kernel_file: &'static str,
    /// The loaders of gemm_tile.cuh that produce A and B (`AIm2col`, `BRowMajor`, ...).
    pub a_loader: &'static str,
    pub b_loader: &'static str,
    pub tiles: &'static [GemmTile],
}

impl GemmFamily {
    /// The kernel of tile `tile` with vector (float4) or scalar loads, on `math`.
    pub fn kernel_name(&self, tile: &GemmTile, vector: bool, math: GemmMath) -> String {
        format!(
            "{}_{}_{}{}",
            self.prefix,
            tile.name,
            if vector { "v" } else { "s" },
            math.suffix()
        )
    }
}

/// The arithmetic of a GEMM kernel (gemm_tile.cuh's `Math*`): f32 FMAs, or tensor cores on
/// TF32 or BF16 operands (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmMath {
    Fma,
    Tf32,
    Bf16,
}

impl GemmMath {
    /// Every arithmetic, each a kernel per family, tile and load width.
    pub const ALL: [GemmMath; 3] = [GemmMath::Fma, GemmMath::Tf32, GemmMath::Bf16];

    /// The struct of gemm_tile.cuh.
    pub fn cuda_type(self) -> &'static str {
        match self {
            GemmMath::Fma => "MathFma",
            GemmMath::Tf32 => "MathTf32",
            GemmMath::Bf16 => "MathBf16",
        }
    }

    /// The kernel names' suffix (none for the FMA kernels, whose names predate the others).
    pub fn suffix(self) -> &'static str {
        match self {
            GemmMath::Fma => "",
            GemmMath::Tf32 => "_tf32",
            GemmMath::Bf16 => "_bf16",
        }
    }
}

const CONV_TILES: &[GemmTile] = &[N16, N32, N64];
const SMALL_TILES: &[GemmTile] = &[S32, S64, M64N32, M32N64];

/// Convolution forward: `y = im2col(x) * w`, bias + ReLU in the epilogue.
pub const CONV_FORWARD: GemmFamily =
    family("conv_fwd", "conv2d.cu", "AIm2col", "BRowMajor", CONV_TILES);
/// Convolution input gradient: `dx = dy gathered * w rearranged`.
pub const CONV_BACKWARD_DATA: GemmFamily = family(
    "conv_bwd_data",
    "conv2d.cu",
    "AConvDy",
    "BConvW",
    CONV_TILES,
);
/// Convolution filter gradient: `[dw; db] = [im2col(x) | 1]^T * dy`.
pub const CONV_BACKWARD_FILTER: GemmFamily = family(
    "conv_bwd_filter",
    "conv2d.cu",
    "AIm2colT",
    "BRowMajor",
    SMALL_TILES,
);
/// Dense forward: `y = x * w`, bias + ReLU in the epilogue.
pub const DENSE_FORWARD: GemmFamily = family(
    "dense_fwd",
    "dense.cu",
    "ARowMajor",
    "BRowMajor",
    SMALL_TILES,
);
/// Dense weight gradient: `[dw; db] = [x | 1]^T * dy`.
pub const DENSE_BACKWARD_WEIGHTS: GemmFamily = family(
    "dense_bwd_w",
    "dense.cu",
    "ATransposed",
    "BRowMajor",
    SMALL_TILES,
);
/// Dense input gradient: `dx = dy * w^T`.
pub const DENSE_BACKWARD_INPUT: GemmFamily = family(
    "dense_bwd_x",
    "dense.cu",
    "ARowMajor",
    "BTransposed",
    SMALL_TILES,
);

/// Every GEMM family, in the order of the generated kernels.
pub const GEMM_FAMILIES: [GemmFamily; 6] = [
    CONV_FORWARD,
    CONV_BACKWARD_DATA,
    CONV_BACKWARD_FILTER,
    DENSE_FORWARD,
    DENSE_BACKWARD_WEIGHTS,
    DENSE_BACKWARD_INPUT,
];

const fn family(
    prefix: &'static str,
    kernel_file: &'static str,
    a_loader: &'static str,
    b_loader: &'static str,
    tiles: &'static [GemmTile],
) -> GemmFamily {
    GemmFamily {
        prefix,
        kernel_file,
        a_loader,
        b_loader,
        tiles,
    }
}
