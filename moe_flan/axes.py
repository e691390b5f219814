"""The one key of einsum letters and logical axis names used across moe_flan.

Einsum letters (each means exactly one thing everywhere in the code base):

  B  batch            sequences in a batch
  L  length           token positions of a sequence (queries in attention)
  M  memory length    key/value positions in attention
  D  embed            model width (d_model)
  H  heads            attention heads
  K  kv               width of one attention head
  F  mlp              hidden width of a feed-forward block or of one expert
  V  vocab            vocabulary entries
  R  relpos buckets   relative-position buckets
  G  groups           routing groups (tokens are routed group by group)
  T  tokens           tokens in one routing group
  E  experts          experts of an MoE layer
  C  capacity         slots one expert has per group
  S  selected         the k experts a token chose (top-k slots)
  P  rows             routed (token, expert) rows sorted by expert (segmented and dropless
                      dispatch, grouped matmuls)

Logical axis names follow t5x/flaxformer so gin rule tables read the same; the
mapping from these names to mesh axes lives in `moe_flan.partitioning.rules`. The mesh axis
names are listed here too, for the code below the partitioning package that runs under a mesh
(the expert-parallel dispatcher).
"""

# Parameter and activation axes (t5x names).
BATCH = 'batch'
LENGTH = 'length'
EMBED = 'embed'
MLP = 'mlp'
HEADS = 'heads'
KV = 'kv'
JOINED_KV = 'joined_kv'
VOCAB = 'vocab'
RELPOS_BUCKETS = 'relpos_buckets'
LAYERS = 'layers'                # leading axis of scanned stacks (T5Config.scan_layers)
# MoE axes (t5x contrib/moe names).
EXPERT = 'expert'
EXPERT_GROUP = 'expert_group'    # the group axis of routed activations
EXPERT_REPLICA = 'expert_replicas'
UNMODELED = 'unmodeled'          # never sharded (e.g. the router's expert axis)
CAPACITY = 'capacity'            # expert slots axis of dispatched activations

# Mesh axes (the device mesh, moe_flan.partitioning.mesh): batch, experts, hidden/heads/vocab.
MESH_DATA = 'data'
MESH_EXPERT = 'expert'
MESH_MODEL = 'model'
MESH_AXES = (MESH_DATA, MESH_EXPERT, MESH_MODEL)
