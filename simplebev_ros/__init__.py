"""simplebev_ros: the ROS 2 adapter around simplebev_core.

Pure modules that tests drive without spinning a node: `conversions` (messages <-> arrays and
model outputs), `bev_grid` (the BEV grid <-> base_link mapping), `tf_buffer` (transforms),
`sync` (camera sets, radar sweeps), `frame_source` (synced messages + TF -> RawFrame). The
node (`node`) only wires them.
"""
