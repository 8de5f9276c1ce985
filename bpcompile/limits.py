"""The limits on a spec, in one place: compiling any spec ends in bounded time and memory.

Each limit is generous for real models (a 10,000-layer chain compiles, in time
linear in its length) and exists so that a hostile spec gets a one-line error
(exit 2) naming the limit instead of hanging the compiler or eating the machine.
SECURITY.md lists them for users.
"""

MAX_SPEC_BYTES = 4 * 1024 * 1024     # the spec file, as read
MAX_YAML_ALIASES = 100               # uses of YAML aliases (*name); a bomb needs many
MAX_YAML_NODES = 200_000             # YAML nodes after composing (scalars, lists, maps), aliases expanded
MAX_YAML_DEPTH = 100                 # nesting of YAML lists and mappings
MAX_NAME_LENGTH = 64                 # characters in a name (inputs, params, nodes, the spec)
MAX_EXPRESSION_CHARS = 10_000        # characters in one expression
MAX_EXPRESSION_DEPTH = 150           # nesting of one expression's syntax tree (a flat sum of n terms nests n deep)
MAX_SPEC_ENTRIES = 100_000           # entries of inputs, params and graph, plus layers
MAX_GRAPH_NODES = 300_000            # nodes of the lowered graph, forward and adjoint (a 10,000-layer chain has 90,000)
MAX_SHAPE_AXES = 4                   # axes of a declared (per-example) shape
MAX_SHAPE_ELEMENTS = 2**31 - 1       # elements of one per-example tensor (int32 indexing in CUDA)
MAX_CLASSES = 2**31 - 1              # classes of a label input
MAX_INIT_MAGNITUDE = 1e30            # |c| in the inits constant(c), normal(std), uniform(limit)
MAX_NAIVE_EXPANSION_OPS = 50_000     # inspect: scalar ops of the small instance expanded for the naive count
MAX_NAIVE_SYMPY_OPS = 20_000         # inspect: naive count beyond which SymPy does not differentiate (DP counts)
MAX_NAIVE_SYMPY_DEPTH = 100          # inspect: depth of the expanded loss beyond which SymPy does not differentiate
NAIVE_COUNT_DIGITS = 100             # inspect: the naive count is exact below 10**this, else "more than"
VERIFY_TIMEOUT = 60.0                # verify: seconds the module under test is given, in all, to answer
