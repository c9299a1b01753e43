"""The built-in plugin: heads, fields, readers and the reference backbone, registered
through the same hooks as any third-party plugin."""

from __future__ import annotations

from tensorframe.backbones.reference import ReferenceBackboneConfig, build_reference_backbone
from tensorframe.fields import BUILTIN_FIELDS, FieldSpec
from tensorframe.heads.named import (
    BornHeadConfig,
    DielectricHeadConfig,
    DipoleHeadConfig,
    ForceHeadConfig,
    HyperpolarizabilityHeadConfig,
    PiezoHeadConfig,
    PolarizabilityHeadConfig,
    build_born_head,
    build_dielectric_head,
    build_dipole_head,
    build_force_head,
    build_hyperpolarizability_head,
    build_piezo_head,
    build_polarizability_head,
)
from tensorframe.heads.scalar import EnergyHeadConfig, ScalarHeadConfig, build_energy_head, build_scalar_head
from tensorframe.heads.tensor import TensorHeadConfig, build_tensor_head
from tensorframe.hookspecs import hookimpl
from tensorframe.io.ase_reader import read_ase
from tensorframe.io.asedb import read_asedb
from tensorframe.io.deepmd import read_deepmd
from tensorframe.io.id_prop import read_id_prop
from tensorframe.io.nmr import read_matten_nmr
from tensorframe.io.vasp import read_vasp
from tensorframe.specs import BackboneSpec, HeadSpec, ReaderSpec


@hookimpl
def tensorframe_register_backbones() -> list[BackboneSpec]:
    return [
        BackboneSpec("reference", ReferenceBackboneConfig, build_reference_backbone,
                     "small invariant message-passing network for tests and examples"),
    ]


@hookimpl
def tensorframe_register_heads() -> list[HeadSpec]:
    return [
        HeadSpec("force", ForceHeadConfig, build_force_head, "forces, F_j = sum_k t_kj e_kj (Eq. 3)"),
        HeadSpec("born", BornHeadConfig, build_born_head,
                 "Born charges: edge + triplet terms (Eq. 4-6), identity per atom, c(x)c per triplet"),
        HeadSpec("dielectric", DielectricHeadConfig, build_dielectric_head,
                 "dielectric tensor: mean of e(x)e terms (Eq. 7) and identity per atom"),
        HeadSpec("piezo", PiezoHeadConfig, build_piezo_head,
                 "piezoelectric tensor: rank-3 products (Eq. 8), delta.a and c(x)c(x)a placements"),
        HeadSpec("dipole", DipoleHeadConfig, build_dipole_head, "molecular dipole; optional charge-flow term"),
        HeadSpec("polarizability", PolarizabilityHeadConfig, build_polarizability_head,
                 "polarizability (extensive, symmetric); optional charge-flow term"),
        HeadSpec("hyperpolarizability", HyperpolarizabilityHeadConfig, build_hyperpolarizability_head,
                 "first hyperpolarizability beta_ijk, symmetric in j, k"),
        HeadSpec("energy", EnergyHeadConfig, build_energy_head,
                 "total energy, a sum of atomic energies; model.conservative derives forces and stress from it"),
        HeadSpec("scalar", ScalarHeadConfig, build_scalar_head, "scalar per atom or structure (energy, ...)"),
        HeadSpec("tensor", TensorHeadConfig, build_tensor_head, "any rank 1-4 tensor with an e3nn symmetry formula"),
    ]


@hookimpl
def tensorframe_register_fields() -> list[FieldSpec]:
    return list(BUILTIN_FIELDS)


@hookimpl
def tensorframe_register_readers() -> list[ReaderSpec]:
    return [
        ReaderSpec("ase", read_ase, (".xyz", ".extxyz", ".cif", ".vasp", "poscar", "contcar", ".traj"),
                   "any structure file ase reads; labels from arrays/info named like fields"),
        ReaderSpec("asedb", read_asedb, (".db",), "ASE database: labels from row data / key-value pairs, Voigt converted"),
        ReaderSpec("deepmd", read_deepmd, (), "DeePMD-kit npy system(s): a directory with type.raw and set.*/"),
        ReaderSpec("id_prop", read_id_prop, (".csv",), "ETGNN's layout: id_prop.csv (ID, tensor components) + <ID>.vasp/.cif"),
        ReaderSpec("vasp", read_vasp, ("outcar", ".xml"), "VASP OUTCAR / vasprun.xml: Born charges, dielectric, piezo, energy, forces, stress"),
        ReaderSpec("matten-nmr", read_matten_nmr, (), "matten si_nmr_data.json: per-atom NMR shielding tensors"),
    ]
